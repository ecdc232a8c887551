"""Exclude patterns with gitignore's meaning (through pathspec), and what changed from the old globs.

The rules are gitignore's: a pattern without "/" (but for a trailing one) matches a name at
any depth; with a "/" at the start or in the middle it is anchored at the source root; a
trailing "/" matches directories only; `*` and `?` stop at "/", `**` crosses them; `!`
re-includes what an earlier pattern excluded; the last pattern that matches a path decides.
An excluded directory excludes everything below it, whatever comes later (git cannot
re-include a file under an excluded directory either): that is what lets a walk prune.

The daemon's own names (temp files, the lock file) are excluded at every depth before any
pattern is looked at, so no `!` can let one through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from foldermirror.tempnames import is_reserved

# Every reserved name (tempnames: ".foldermirror-…tmp", ".foldermirror.lock") holds this:
# one substring test spares splitting the path on the common, unreserved one.
_RESERVED_MARK = ".foldermirror"


class PatternError(ValueError):
    """A pattern gitignore cannot read (e.g. a lone "!" or a trailing "\\")."""


class _Rule(NamedTuple):
    exclude: bool             # False: a "!" pattern, which re-includes
    search: str               # pathspec's regex: found in a path, it matches the path or a directory above it
    exact: re.Pattern[str]    # found in a path, it matches that path itself (a directory with a trailing "/")


def _compile(patterns: Sequence[str]) -> list[_Rule]:
    if not patterns:
        return []
    import pathspec  # here, not at the top: 30 modules and 0.7 MiB that a folder without excludes never needs

    rules = []
    for line in patterns:
        try:
            compiled = pathspec.GitIgnoreSpec.from_lines([line]).patterns
        except Exception as exc:  # pathspec's GitIgnorePatternError, and whatever else it may raise
            raise PatternError(f"not a gitignore pattern: {line!r} ({exc})") from None
        for p in compiled:
            regex = getattr(p, "regex", None)
            if p.include is None or regex is None:
                continue  # a comment, a blank line, or a pattern that matches nothing
            found = _plain(regex.pattern)
            # `a/**` is "everything inside a": pathspec's `^a/` alone would also match a itself.
            inside = ".+" if line.rstrip().endswith("/**") else ""
            rules.append(_Rule(bool(p.include), found + inside, re.compile(f"(?:{found}){inside}$")))
    return rules


def _plain(regex: str) -> str:
    # pathspec names a group in each pattern's regex; the same name twice cannot be combined.
    # The regex's form is pathspec 1.x's (pyproject pins the major version): found in a path,
    # it matches the path or a directory above it; tests/unit/test_filters.py holds the
    # result to `git check-ignore`, so a pathspec that changed the form fails there.
    return regex.replace("(?P<ps_d>", "(")


def check_pattern(line: str) -> None:
    """Raise PatternError when gitignore cannot read `line` (the config reader calls it)."""
    _compile([line])


class Excluder:
    """gitignore-style patterns on source-relative paths; the daemon's own names always excluded.

    Call it with the path and whether it is a directory. A directory-only pattern (`cache/`)
    needs to know; `is_dir=None` (the type is not known: a path already deleted) answers
    True when the path is excluded as a file or as a directory. That is the safe side for
    the one thing an unknown type is asked about, replaying a deletion: a name excluded in
    either form is never deleted from the target on an event; a file deletion missed that
    way (a file named like an excluded directory) is an extra entry the next comparison,
    which knows the type, deletes.
    """

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = tuple(patterns)
        self._rules = _compile(self.patterns)
        self._any = _combined([r.search for r in self._rules if r.exclude])
        self._negations = any(not r.exclude for r in self._rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __call__(self, rel: str, is_dir: bool | None = None) -> bool:
        if _RESERVED_MARK in rel and any(is_reserved(part) for part in rel.split("/")):
            return True
        if self._any is None:
            return False
        # A directory is matched with its trailing "/"; so is an unknown type, which then
        # matches directory-only patterns and all others alike.
        path = rel if is_dir is False else rel + "/"
        if not self._any(path):
            return False  # no exclude pattern matches it nor any directory above it
        if not self._negations:
            return True
        return self._decide(rel, is_dir)

    def _decide(self, rel: str, is_dir: bool | None) -> bool:
        """gitignore's walk: each directory from the top, then the path; the last rule matching wins."""
        assert self._any is not None
        parts = rel.split("/")
        for i in range(1, len(parts)):
            head = _join(parts, i) + "/"
            # No exclude pattern matches this directory nor one above it: the one search
            # spares asking each rule in turn.
            if self._any(head) and self._last(head):
                return True  # below an excluded directory: nothing re-includes it
        if is_dir is None:
            return self._last(rel) or self._last(rel + "/")
        return self._last(rel + "/" if is_dir else rel)

    def _last(self, path: str) -> bool:
        for rule in reversed(self._rules):
            if rule.exact.search(path) is not None:
                return rule.exclude
        return False


_ANY_DEPTH = "^(?:.+/)?"   # how pathspec starts the regex of a pattern that matches at any depth


def _combined(regexes: list[str]) -> Callable[[str], bool] | None:
    """One test for "some exclude pattern matches the path or a directory above it".

    Each pattern's regex, searched for, matches the path and everything below it. Those of
    name patterns (any depth) share their start, factored out so the engine tries each "/"
    once for all of them; anchored ones are matched at the start only; the rest (`*/`,
    `**`) are searched for.
    """
    if not regexes:
        return None
    names = [r[len(_ANY_DEPTH):] for r in regexes if r.startswith(_ANY_DEPTH)]
    anchored = [r[1:] for r in regexes if r.startswith("^") and not r.startswith(_ANY_DEPTH)]
    loose = [r for r in regexes if not r.startswith("^")]
    tests = []
    if names:
        tests.append(re.compile(_ANY_DEPTH + "(?:" + "|".join(f"(?:{x})" for x in names) + ")").match)
    if anchored:
        tests.append(re.compile("|".join(f"(?:{x})" for x in anchored)).match)
    if loose:
        tests.append(re.compile("|".join(f"(?:{x})" for x in loose)).search)
    if len(tests) == 1:
        only = tests[0]
        return lambda path: only(path) is not None
    return lambda path: any(test(path) is not None for test in tests)


def _join(parts: list[str], n: int) -> str:
    return "/".join(parts[:n])


MAX_PATTERN_FILE = 1 << 20


def parse_pattern_file(text: str) -> tuple[str, ...]:
    """The patterns of a gitignore-format file, each checked: comments and blank lines dropped.

    A line starting with "#" is a comment, one starting with "\\#" a pattern for a name that
    starts with "#"; trailing spaces go unless escaped ("\\ "), as git reads the file.
    A line gitignore cannot read is a PatternError naming its line number.
    """
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            check_pattern(line)
        except PatternError as exc:
            raise PatternError(f"line {number}: {exc}") from None
        out.append(line)
    return tuple(out)


def load_pattern_file(path: str) -> tuple[str, ...]:
    """Read an exclude_from file (UTF-8, at most 1 MiB); OSError, UnicodeDecodeError or PatternError."""
    with open(path, "rb") as f:
        data = f.read(MAX_PATTERN_FILE + 1)
    if len(data) > MAX_PATTERN_FILE:
        raise PatternError(f"larger than {MAX_PATTERN_FILE >> 20} MiB; a pattern file needs far less")
    return parse_pattern_file(data.decode("utf-8"))


# -- what a pattern meant before (fnmatch globs) and what it means now -------------------------

class MeaningChange(NamedTuple):
    pattern: str
    before: str     # what it matched as a glob
    now: str        # what it matches as a gitignore pattern
    old_meaning: str  # how to write the old meaning, if wanted


_WILD = re.compile(r"[*?\[]")


def meaning_change(pattern: str) -> MeaningChange | None:
    """How `pattern` matches differently from the fnmatch globs of earlier versions, or None.

    Earlier: a pattern without "/" matched a name at any depth (and all below a matching
    directory) — gitignore does the same; one with "/" matched from the top of the source
    (leading and trailing "/" ignored) with `*` and `?` crossing "/", or any leading part
    of a path. Only a name pattern's characters that gitignore reads otherwise, a "/"
    pattern's position or type rules and a wildcard that crossed "/" make a difference.
    """
    p = pattern
    if p.startswith("!"):
        return MeaningChange(p, f"a name that starts with '!' ({p})", f"nothing: it is a negation, re-including what matches {p[1:]!r}",
                             "\\" + p)
    if p.startswith("#"):
        return MeaningChange(p, f"a name that starts with '#' ({p})", "nothing: it is a comment", "\\" + p)
    if "\\" in p:
        return MeaningChange(p, "a backslash as a character", "the name with each backslash escaping the next character (\\\\ for one)",
                             p.replace("\\", "\\\\"))
    if "[^" in p:
        return MeaningChange(p, "a '^' in a [...] class as a character", "a [^...] class as a negated one, as [!...]",
                             p.replace("[^", "[\\^"))
    if p != p.rstrip(" "):
        return MeaningChange(p, "the name with its trailing spaces", "the name without its trailing spaces (dropped)",
                             p.rstrip(" ") + "\\ " * (len(p) - len(p.rstrip(" "))))
    if "/" not in p:
        return None
    body = p.strip("/")
    if not body:
        return None
    if p.endswith("/"):
        anchored = p.startswith("/") or "/" in body
        where = "at that place from the source root" if anchored else "at any depth"
        old = "/" + body
        return MeaningChange(p, f"{body!r} from the source root, file or directory, and all below",
                             f"only a directory named {body!r} {where}, and all below",
                             old if not _wild_inside(body) else _crossing(old)[0])
    if not _wild_inside(body):
        return None  # anchored either way; a wildcard at the very end could cross "/" only into what is below
    old, exact = _crossing("/" + body)
    if body.startswith("**/"):
        before = f"{body} only below a directory (at least one level deep), not {_example(body[3:])} at the top"
        now = f"{body[3:]} at any depth, {_example(body[3:])} at the top included"
    elif "/**/" in body:
        example = _example(body.replace("/**/", "/", 1))
        before = f"{body} with at least one directory in place of /**/, not {example}"
        now = f"{body} with zero or more directories in place of /**/, {example} included"
    else:
        example = _example(body, crossing=True)
        before = f"{body} from the source root, * and ? crossing '/' (e.g. {example})"
        now = f"{body} from the source root, * and ? within one name (not {example})"
    return MeaningChange(p, before, now, old if exact else old + " (close; the old meaning has no exact spelling)")


def _example(body: str, crossing: bool = False) -> str:
    """A path the pattern `body` matches; with `crossing`, its first wildcard standing for "x/y"."""
    out = re.sub(r"\[[^\]]*\]", "x", body.replace("**", "x"))
    if crossing:
        out = re.sub(r"[*?]", "x/y", out, count=1)
    return re.sub(r"[*?]", "x", out)


def _wild_inside(body: str) -> bool:
    """A wildcard with something after it: only then could crossing "/" match more."""
    m = _WILD.search(body)
    return m is not None and m.end() < len(body) and body[m.end():] not in ("*", "**")


def _crossing(anchored: str) -> tuple[str, bool]:
    """A gitignore spelling of an old "/" glob (`*` crossing "/"), and whether it is exact."""
    parts = anchored.lstrip("/").split("/")
    out: list[str] = []
    exact = True
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append("*/**")  # the old `**` stood for at least one character, so one level at least
            continue
        if "*" in part and not last:
            if part == "*":
                out.append("*/**")  # `*` then "/": any non-empty run of directories
            else:
                out.append(part)
                exact = False
            continue
        if "*" in part and last and i > 0 and part.startswith("*") and out[-1:] != ["*/**"]:
            out.append("**/" + part)  # `dir/*.ext`: also in the folders below
            continue
        if "?" in part or "[" in part:
            exact = False
        out.append(part)
    return "/" + "/".join(out), exact


def changes(patterns: Iterable[str]) -> list[MeaningChange]:
    return [c for p in patterns if (c := meaning_change(p)) is not None]


MEANING_FIX = ("run foldermirror check to see, per pattern, what it matched before and what it matches now; "
               "write the old spelling it gives if the old meaning was wanted, then reload")


def warn_meaning_changed(log: Any, folders: Iterable[Any]) -> None:
    """One `exclude_meaning_changed` line per folder whose exclude: patterns match otherwise than before.

    Only exclude:, which earlier versions read as globs; exclude_from files are new and
    always meant gitignore. Said at start and on every reload, as long as the config keeps them.
    """
    for f in folders:
        changed = changes(f.exclude)
        if changed:
            log.warning("exclude_meaning_changed", folder=f.name, patterns=[c.pattern for c in changed],
                        error="exclude patterns now have gitignore's meaning; these match otherwise than before",
                        old_meaning=[c.old_meaning for c in changed], fix=MEANING_FIX)


