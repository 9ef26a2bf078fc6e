"""pip_failure.py LOG SOURCE PYTHON_VERSION: why `pip install` failed, read from its output.

Prints the ERROR line of bin/compile's message (first line: what failed, naming the package),
then the lines that say what to do, the last one quoting pip's own error. Kinds told apart:
no matching distribution, a package built from source that failed (a missing library, header,
compiler or tool named when pip's output says which), a hash that does not match or is missing,
conflicting pins, a git checkout that failed; anything else quotes pip's last error lines.
"""

import re
import sys

sys.dont_write_bytecode = True

# What a failed source build says, and what is missing then.
MISSING = [
    (re.compile(r"pg_config executable not found|pg_config is required"),
     "pg_config (PostgreSQL's libpq-dev)"),
    (re.compile(r"mysql_config not found|Can not find valid pkg-config name"),
     "the MySQL/MariaDB client library (libmariadb-dev or default-libmysqlclient-dev, and "
     "pkg-config)"),
    (re.compile(r"fatal error: ([\w./+-]+\.h): No such file or directory"),
     "the header {0} (its library's -dev package)"),
    (re.compile(r"(?:error: )?command '([^']*(?:gcc|cc|clang|g\+\+)[^']*)' failed: No such file or directory"),
     "a C compiler ({0}: build-essential)"),
    (re.compile(r"(?:can't find Rust compiler|error: can't find Rust compiler|cargo: not found|"
                r"Cargo, the Rust package manager, is not installed)", re.I),
     "a Rust compiler (cargo)"),
    (re.compile(r"(?:Package '?([\w.+-]+)'?,? .*not found|No package '([\w.+-]+)' found)"),
     "the library {0} that pkg-config looks for (its -dev package)"),
    (re.compile(r"pkg-config: (?:not found|command not found)|Did not find pkg-config"),
     "pkg-config"),
    (re.compile(r"\b([\w.+-]+-config)(?: executable)? not found"), "{0}"),
]

BUILD_FAILED = [
    re.compile(r"Failed building wheel for ([\w.-]+)"),
    re.compile(r"Building wheel for ([\w.-]+) \(.*\) did not run successfully"),
    re.compile(r"Running setup\.py install for ([\w.-]+): finished with status 'error'"),
    re.compile(r"Failed to build ([\w.-]+)"),
    re.compile(r"Could not build wheels for ([\w.-]+)"),
]
BUILD_STEP_FAILED = re.compile(
    r"× (?:Getting requirements to build wheel|Preparing metadata \(pyproject\.toml\)|"
    r"python setup\.py egg_info|Installing build dependencies|pip subprocess to install build "
    r"dependencies|Building wheel for [\w.-]+ \([^)]*\)|Running setup\.py install for [\w.-]+) "
    r"did not run successfully")


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def last(lines, pattern):
    for line in reversed(lines):
        m = pattern.search(line)
        if m:
            return m
    return None


def pip_errors(lines):
    """pip's own last error lines (ERROR: ..., or the × summary), verbatim."""
    errors = [ln.strip() for ln in lines if ln.startswith("ERROR:")]
    if errors:
        return errors[-3:]
    marks = [ln.strip() for ln in lines if ln.startswith(("× ", "error: "))]
    return marks[-2:]


def collecting(lines, upto):
    """The package pip was collecting last before line `upto`."""
    for line in reversed(lines[:upto]):
        m = re.match(r"\s*Collecting ([A-Za-z0-9][\w.-]*)", line)
        if m:
            return m.group(1)
        m = re.match(r"\s*(?:Processing|Obtaining) (\S+)", line)
        if m:
            return m.group(1)
    return None


def explain(text, source, python):
    """[ERROR line, what to do..., pip's own error]."""
    lines = text.splitlines()
    minor = ".".join(python.split(".")[:2])
    said = pip_errors(lines)
    quote = ["pip's own error: " + e for e in said] or ["(pip printed no error line)"]
    relock = {"Pipfile.lock": "pipenv lock", "poetry.lock": "poetry lock",
              "uv.lock": "uv lock"}.get(source)

    # A hash that does not match the lock's.
    if "DO NOT MATCH THE HASHES" in text:
        m = re.search(r"^[ \t]+([A-Za-z0-9][\w.-]*==[^\s]+) from (\S+)", text, re.M)
        got = re.search(r"Expected (\w+) (\w+)\s+Got\s+(\w+)", text)
        what = m.group(1) if m else "a package"
        return ["pip refused %s: its file's hash is not one that %s pins" % (what, source),
                "Hash-checking mode is on: every file pip installs must have a hash %s lists." % source,
                ("Expected %s %s, got %s." % got.groups()) if got else "",
                "If the package changed on purpose, %s and commit the result; otherwise the file "
                "pip was given is not the one that was locked (tampered with, or a different "
                "build on the index)." % ("run `%s`" % relock if relock else "update its hashes"),
                ] + quote
    if "Hashes are required in --require-hashes mode" in text or \
            "all requirements must have their versions pinned" in text:
        missing = re.findall(r"^[ \t]{4}([A-Za-z0-9][\w.-]*)(?:==|\s)", text, re.M)
        names = ", ".join(dict.fromkeys(missing)) or "some packages"
        if source == "requirements.txt":
            why = ("requirements.txt gives hashes for some packages, so pip checks every one: "
                   "give every package (and its dependencies) a version and a hash, for example "
                   "with `pip-compile --generate-hashes`")
        else:
            why = ("%s is incomplete: pip needs %s, which it does not pin with a hash; run `%s` "
                   "and commit the lock" % (source, names, relock or "the lock again"))
        return ["pip needs a pinned, hashed version of %s, and %s has none" % (names, source),
                why] + quote

    # A package built from source that failed.
    failed_build = last(lines, BUILD_STEP_FAILED) or any(p.search(text) for p in BUILD_FAILED)
    if failed_build:
        pkg = None
        for p in BUILD_FAILED:
            m = last(lines, p)
            if m:
                pkg = m.group(1)
                break
        if pkg is None:
            at = next((i for i in range(len(lines) - 1, -1, -1)
                       if BUILD_STEP_FAILED.search(lines[i])), len(lines))
            pkg = collecting(lines, at) or "a package"
        cause = None
        for pattern, what in MISSING:
            m = last(lines, pattern)
            if m:
                groups = [g for g in m.groups() if g] if m.groups() else []
                cause = what.format(*groups) if groups else what
                break
        head = "pip could not build %s from source" % pkg
        if cause:
            head += ": %s is missing on the mini-MAR host" % cause
        detail = [d.strip() for d in re.findall(r"^[ \t]+.*\bfatal error: .*$", text, re.M)]
        if not detail:
            detail = [d.strip() for d in re.findall(
                r"^[ \t]+(?:Error|error|Exception|\w+Error)\b[^\n]*", text, re.M)
                if "subprocess-exited-with-error" not in d]
        detail = [d if len(d) <= 200 else d[:197] + "..." for d in detail[-2:]]
        local = next((m.group(1) for m in re.finditer(r"^[ \t]*Processing (\S+)", text, re.M)
                      if not re.search(r"\.(whl|tar\.gz|zip|tar\.bz2|tgz)$", m.group(1))
                      and normalize(m.group(1).rstrip("/").rsplit("/", 1)[-1]) == normalize(pkg)),
                     None)
        if local:
            return [head,
                    "%s is built from the app's own source (%s), which needs a system library, "
                    "header or tool the host lacks." % (pkg, local),
                    "Install what it needs on the mini-MAR host (its -dev package: apt-get "
                    "install ...), or change its build so it does without.",
                    ] + ["The build said: " + d for d in detail] + quote
        binary = (", or depend on psycopg2-binary instead" if normalize(pkg) == "psycopg2" else
                  ", or its binary variant if the project has one (as psycopg2-binary is "
                  "psycopg2's)")
        return [head,
                "%s has no wheel for Python %s on this Linux, so pip built it from its source, "
                "which needs a system library, header or tool the host lacks." % (pkg, minor),
                "Install what it needs on the mini-MAR host (its -dev package: apt-get install "
                "...), or pin a version of %s that publishes a wheel for Python %s%s."
                % (pkg, minor, binary),
                ] + ["The build said: " + d for d in detail] + quote

    # A git checkout that failed.
    m = last(lines, re.compile(r"× git (?:clone|checkout|fetch)\b.* did not run successfully"))
    if m or "Cannot find command 'git'" in text:
        i = next((i for i in range(len(lines) - 1, -1, -1) if "Cloning " in lines[i]), None)
        what = re.search(r"Cloning (\S+)", lines[i]).group(1) if i is not None else "a git source"
        why = [ln.strip() for ln in lines if ln.strip().startswith("fatal:")][-1:]
        return ["pip could not check out %s from git" % what,
                "A package in %s comes from git: the build must be able to clone it (a public "
                "URL, or credentials in the URL from a config var) and the commit must exist."
                % source] + ["git said: " + w for w in why] + quote

    # Pinned versions that cannot go together.
    if "ResolutionImpossible" in text or "conflicting dependencies" in text:
        cause = [ln.strip() for ln in lines if re.match(r"\s{4}\S", ln) and
                 ("depends on" in ln or "requested" in ln)]
        return ["pip found that the pinned versions in %s conflict" % source,
                "Change the pins so they agree%s." % (", or run `%s` again" % relock
                                                      if relock else ""),
                ] + ["The conflict: " + c for c in cause[:4]] + quote

    # Nothing on the index matches.
    m = last(lines, re.compile(r"No matching distribution found for (\S+)"))
    if m:
        req = m.group(1)
        network = re.search(r"NewConnectionError|Failed to establish a new connection|"
                            r"Temporary failure in name resolution|Max retries exceeded|"
                            r"ProxyError|SSLError", text)
        if network:
            return ["pip could not reach the package index for %s" % req,
                    "The mini-MAR host could not connect to the index (network, DNS or proxy): "
                    "the index pip uses must be reachable from the build."] + quote
        versions = re.search(r"\(from versions: ([^)]*)\)", text)
        known = versions.group(1) if versions else ""
        return ["pip found no %s on the package index" % req,
                "Check %s: every package and version must exist on PyPI (or the index the app "
                "names), with a file for Python %s on Linux%s." % (
                    source, minor, "; the index has versions %s" % known
                    if known and known != "none" else "")] + quote

    return ["pip failed to install the requirements from %s" % source,
            "Its output above says more; the last error lines:"] + quote


# What is read of pip's output: its end (where pip's errors are), and each line cut, so that
# a build that prints a great deal (the app's setup.py can print anything) is read in
# bounded time.
MAX_LOG = 1 << 20
MAX_LINE = 4096


def tail(f):
    """The last MAX_LOG bytes of an open binary file as text, lines cut to MAX_LINE."""
    f.seek(0, 2)
    size = f.tell()
    f.seek(max(0, size - MAX_LOG))
    data = f.read().decode("utf-8", errors="replace")
    if size > MAX_LOG:
        data = data.split("\n", 1)[-1]  # from the first whole line
    return "\n".join(ln[:MAX_LINE] for ln in data.split("\n"))


def main():
    log, source, python = sys.argv[1:4]
    with open(log, "rb") as f:
        text = tail(f)
    for line in explain(text, source, python):
        if line:
            print(line)


if __name__ == "__main__":
    main()
