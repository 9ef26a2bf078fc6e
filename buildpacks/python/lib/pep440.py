"""Versions and version specifiers as PEP 440 defines them, and Poetry's constraint syntax,
for the Python buildpack's scripts (the host's Python may have no `packaging`).

Version(text) parses and orders versions; Specifiers(text) is a comma-separated specifier set
(`~=`, `==`, `==X.Y.*`, `!=`, `<=`, `>=`, `<`, `>`, `===`); poetry_alternatives(text) turns a
Poetry constraint (`^1.2`, `~1.2`, `1.2.*`, `>=1,<2 || 3.*`) into PEP 440 specifier sets, and
poetry_python_marker(text) into a PEP 508 marker on the interpreter's version.
"""

import re

_VERSION = re.compile(
    r"""
    v?
    (?:(?P<epoch>[0-9]+)!)?
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?:[-_.]?(?P<pre_l>alpha|a|beta|b|preview|pre|c|rc)[-_.]?(?P<pre_n>[0-9]+)?)?
    (?:-(?P<post_n1>[0-9]+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?)?
    (?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>[0-9]+)?)?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
    """,
    re.VERBOSE | re.IGNORECASE,
)

_PRE = {"a": "a", "alpha": "a", "b": "b", "beta": "b", "c": "rc", "rc": "rc", "pre": "rc",
        "preview": "rc"}


class InvalidVersion(ValueError):
    pass


class Version:
    """A PEP 440 version, normalised and ordered as the PEP says."""

    def __init__(self, text):
        m = _VERSION.fullmatch(text.strip())
        if not m:
            raise InvalidVersion("not a PEP 440 version: %r" % text)
        self.text = text.strip()
        self.epoch = int(m.group("epoch") or 0)
        self.release = tuple(int(p) for p in m.group("release").split("."))
        self.pre = None
        if m.group("pre_l"):
            self.pre = (_PRE[m.group("pre_l").lower()], int(m.group("pre_n") or 0))
        self.post = None
        if m.group("post_n1") is not None:
            self.post = int(m.group("post_n1"))
        elif m.group("post_l"):
            self.post = int(m.group("post_n2") or 0)
        self.dev = int(m.group("dev_n") or 0) if m.group("dev_l") else None
        self.local = None
        if m.group("local"):
            self.local = tuple(
                int(p) if p.isdigit() else p.lower() for p in re.split(r"[-_.]", m.group("local")))

    @property
    def is_prerelease(self):
        return self.pre is not None or self.dev is not None

    @property
    def public(self):
        """This version without its local label."""
        v = Version.__new__(Version)
        v.__dict__.update(self.__dict__)
        v.local = None
        return v

    def base_release(self, n=None):
        """The release segment padded with zeros (or cut) to n parts."""
        r = self.release
        if n is None:
            return r
        return (r + (0,) * n)[:n]

    def _key(self):
        release = list(self.release)
        while len(release) > 1 and release[-1] == 0:
            release.pop()
        inf, ninf = (2, 0), (0, 0)
        if self.pre is None and self.post is None and self.dev is not None:
            pre = ninf  # 1.0.dev0 sorts before 1.0a0
        elif self.pre is None:
            pre = inf
        else:
            pre = (1, ("a", "b", "rc").index(self.pre[0]), self.pre[1])
        post = ninf if self.post is None else (1, self.post)
        dev = inf if self.dev is None else (1, self.dev)
        if self.local is None:
            local = ((0, ""),)
        else:
            # A local label sorts after none; numeric parts after alphanumeric ones.
            local = tuple((2, p, "") if isinstance(p, int) else (1, 0, p) for p in self.local)
        return (self.epoch, tuple(release), pre, post, dev, local)

    def __eq__(self, other):
        return self._key() == other._key()

    def __lt__(self, other):
        return self._key() < other._key()

    def __le__(self, other):
        return self._key() <= other._key()

    def __gt__(self, other):
        return self._key() > other._key()

    def __ge__(self, other):
        return self._key() >= other._key()

    def __hash__(self):
        return hash(self._key())

    def __str__(self):
        s = "%s!" % self.epoch if self.epoch else ""
        s += ".".join(map(str, self.release))
        if self.pre:
            s += "%s%d" % self.pre
        if self.post is not None:
            s += ".post%d" % self.post
        if self.dev is not None:
            s += ".dev%d" % self.dev
        if self.local:
            s += "+" + ".".join(map(str, self.local))
        return s

    __repr__ = __str__


class InvalidSpecifier(ValueError):
    pass


_CLAUSE = re.compile(r"\s*(~=|===|==|!=|<=|>=|<|>)\s*([^\s,;]+)\s*")


class Specifier:
    """One clause, such as `>=3.11` or `==3.11.*`."""

    def __init__(self, text):
        m = _CLAUSE.fullmatch(text)
        if not m:
            raise InvalidSpecifier("not a PEP 440 version specifier: %r" % text.strip())
        self.op, self.text = m.group(1), m.group(2)
        self.wildcard = False
        if self.op == "===":
            self.version = None
            return
        v = self.text
        if v.endswith(".*"):
            if self.op not in ("==", "!="):
                raise InvalidSpecifier("%s%s: only == and != take a .* suffix" % (self.op, v))
            self.wildcard = True
            v = v[:-2]
        try:
            self.version = Version(v)
        except InvalidVersion:
            raise InvalidSpecifier("not a PEP 440 version specifier: %s%s" % (self.op, self.text))
        if self.wildcard and (self.version.local or self.version.dev is not None):
            raise InvalidSpecifier("%s%s: a prefix match cannot name a dev or local version"
                                   % (self.op, self.text))
        if self.version.local and self.op not in ("==", "!="):
            raise InvalidSpecifier("%s%s: only == and != take a local version" % (self.op, self.text))
        if self.op == "~=" and len(self.version.release) < 2:
            raise InvalidSpecifier("~=%s: a compatible release needs at least two parts (~=3.11)"
                                   % self.text)

    def __str__(self):
        return self.op + self.text

    def _prefix_match(self, candidate):
        """==V.*: candidate's public version starts with V (release padded with zeros)."""
        prefix = self.version
        c = candidate.public
        if c.epoch != prefix.epoch:
            return False
        n = len(prefix.release)
        if c.base_release(n) != prefix.release:
            return False
        # A prefix naming a pre- or post-release must match those parts too.
        if prefix.pre is not None:
            if c.pre != prefix.pre or len(c.release) > n and any(c.release[n:]):
                return False
        if prefix.post is not None and c.post != prefix.post:
            return False
        return True

    def _equal(self, candidate):
        if self.version.local is None:
            candidate = candidate.public
        return candidate == self.version

    def contains(self, candidate):
        op, v = self.op, self.version
        if op == "===":
            return str(candidate.text).lower() == self.text.lower()
        if op == "==":
            return self._prefix_match(candidate) if self.wildcard else self._equal(candidate)
        if op == "!=":
            return not (self._prefix_match(candidate) if self.wildcard else self._equal(candidate))
        c = candidate.public
        if op == ">=":
            return c >= v
        if op == "<=":
            return c <= v
        if op == "<":
            # <V never admits a pre-release of V itself unless V is one.
            if not c < v:
                return False
            if not v.is_prerelease and v.post is None and c.is_prerelease \
                    and c.epoch == v.epoch and _same_release(c, v):
                return False
            return True
        if op == ">":
            # >V never admits a post-release of V unless V is one.
            if not c > v:
                return False
            if v.post is None and v.dev is None and c.post is not None \
                    and c.epoch == v.epoch and _same_release(c, v) and c.pre == v.pre:
                return False
            return True
        if op == "~=":
            prefix = Specifier("==" + ".".join(map(str, v.release[:-1])) + ".*")
            if v.epoch:
                prefix = Specifier("==%d!" % v.epoch + ".".join(map(str, v.release[:-1])) + ".*")
            return c >= v and prefix._prefix_match(c)
        raise AssertionError(op)


def _same_release(a, b):
    n = max(len(a.release), len(b.release))
    return a.base_release(n) == b.base_release(n)


class Specifiers:
    """A comma-separated set of clauses: a version is in it when every clause contains it.
    Pre-releases are in it only when a clause names one, or when `prereleases` is true."""

    def __init__(self, text):
        self.text = text.strip()
        parts = [p for p in self.text.split(",")]
        if self.text == "":
            parts = []
        self.clauses = [Specifier(p) for p in parts]

    def __str__(self):
        return ",".join(str(c) for c in self.clauses)

    @property
    def names_prerelease(self):
        return any(c.version is not None and c.version.is_prerelease for c in self.clauses)

    def contains(self, version, prereleases=None):
        if isinstance(version, str):
            version = Version(version)
        if prereleases is None:
            prereleases = self.names_prerelease
        if version.is_prerelease and not prereleases:
            return False
        return all(c.contains(version) for c in self.clauses)

    def filter(self, versions):
        """The versions in this set; pre-releases only when nothing else is (PEP 440)."""
        versions = list(versions)
        finals = [v for v in versions if self.contains(v)]
        if finals:
            return finals
        return [v for v in versions if self.contains(v, prereleases=True)]


# Poetry's constraint syntax -------------------------------------------------------------

def _bump(release, index):
    r = list(release[: index + 1])
    r[index] += 1
    return ".".join(map(str, r))


def _poetry_clause(text):
    """One Poetry clause as a list of PEP 440 clauses."""
    t = text.strip()
    if t in ("*", ""):
        return []
    m = re.fullmatch(r"\^\s*(\S+)", t)
    if m:
        v = Version(m.group(1).rstrip(".*"))
        r = v.release
        # Bump the first non-zero part given; when all are zero, the last one given.
        index = next((i for i, p in enumerate(r) if p != 0), len(r) - 1)
        return [">=" + str(v), "<" + _bump(r, index)]
    m = re.fullmatch(r"~(?!=)\s*(\S+)", t)
    if m:
        v = Version(m.group(1).rstrip(".*"))
        r = v.release
        return [">=" + str(v), "<" + _bump(r, 1 if len(r) > 1 else 0)]
    m = re.fullmatch(r"(~=|===|==|!=|<=|>=|<|>|=)?\s*(\S+)", t)
    if not m:
        raise InvalidSpecifier("not a Poetry constraint: %r" % text)
    op, v = m.group(1) or "==", m.group(2)
    if op == "=":
        op = "=="
    if v.endswith((".x", ".X")):
        v = v[:-2] + ".*"
    if v.endswith(".*") and op not in ("==", "!="):
        # >=1.2.* is Poetry's way of saying >=1.2
        v = v[:-2]
    return [op + v]


def poetry_alternatives(text):
    """A Poetry constraint as a list of Specifiers, any of which may hold."""
    result = []
    for alt in re.split(r"\s*\|\|?\s*", text.strip()):
        clauses = []
        # Clauses are separated by commas, or by spaces between complete clauses.
        for part in re.split(r"\s*,\s*|(?<=[0-9A-Za-z*])\s+(?=[<>=!~^*0-9])", alt):
            if part.strip():
                clauses.extend(_poetry_clause(part))
        result.append(Specifiers(",".join(clauses)))
    return result


def poetry_allows(text, version):
    if isinstance(version, str):
        version = Version(version)
    return any(s.contains(version, prereleases=True) for s in poetry_alternatives(text))


def poetry_python_marker(text):
    """A Poetry `python = "..."` constraint as a PEP 508 marker, or "" when it is any."""
    alternatives = []
    for spec in poetry_alternatives(text):
        if not spec.clauses:
            return ""
        parts = []
        for c in spec.clauses:
            if c.wildcard and c.op == "==" and len(c.version.release) == 2:
                parts.append('python_version == "%s"' % ".".join(map(str, c.version.release)))
            elif c.wildcard and c.op == "!=" and len(c.version.release) == 2:
                parts.append('python_version != "%s"' % ".".join(map(str, c.version.release)))
            else:
                parts.append('python_full_version %s "%s"' % (c.op, c.text))
        alternatives.append(" and ".join(parts))
    if len(alternatives) == 1:
        return alternatives[0]
    return " or ".join("(%s)" % a for a in alternatives)
