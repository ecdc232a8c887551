"""Exclude patterns with gitignore's meaning (filters.py), what changed from the old globs, exclude_from."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fakes import FakeLog
from foldermirror import filters
from foldermirror.admission import reload_plan
from foldermirror.cli import exclude_changes
from foldermirror.config import load_config, parse_config
from foldermirror.errors import EXIT_CONFIG, ConfigError
from foldermirror.filters import Excluder, meaning_change, parse_pattern_file

pytestmark = pytest.mark.timeout(60)


def old_glob(patterns: tuple[str, ...]):
    """The Excluder of earlier versions (fnmatch), less reserved names: what a pattern matched before."""
    names = [fnmatch.translate(p) for p in patterns if "/" not in p]
    paths = [fnmatch.translate(p.strip("/")) for p in patterns if "/" in p]
    name = re.compile("|".join(names)) if names else None
    path = re.compile("|".join(paths)) if paths else None

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        if name is not None and any(name.match(part) for part in parts):
            return True
        return path is not None and any(path.match("/".join(parts[:i])) for i in range(1, len(parts) + 1))
    return excluded


# A tree to try patterns on: (path, is_dir). Names that look alike at many depths.
TREE = [
    ("a.txt", False), ("c.log", False), ("x.tmp", False), ("keep.tmp", False), (".#lock", False), ("f~", False),
    ("a.swp", False), ("top", False), ("docs", True), ("docs/a.pdf", False), ("docs/a", True), ("docs/a/b.pdf", False),
    ("docs/a/keep.tmp", False), ("x", True), ("x/c.log", False), ("x/y", True), ("x/y/c.log", False), ("x/top", False),
    ("x/build", True), ("x/build/o", False), ("x/y/build", True), ("x/y/build/o", False), ("cache", True),
    ("cache/x", False), ("src", True), ("src/cache", True), ("src/cache/x", False), ("src/cache.c", False),
    ("a", True), ("a/z", False), ("a/b", True), ("a/b/z", False), ("a/b/c", True), ("a/b/c/z", False),
    ("build", True), ("build/keep", False), ("build/other", False), ("important", True), ("important/x.log", False),
]


@pytest.mark.parametrize("pattern, path, is_dir, before, now", [
    ("docs/*.pdf", "docs/a/b.pdf", False, True, False),   # `*` no longer crosses "/"
    ("docs/*.pdf", "docs/a.pdf", False, True, True),
    ("**/*.log", "c.log", False, False, True),              # `**/` is zero or more directories
    ("**/*.log", "x/y/c.log", False, True, True),
    ("cache/", "src/cache/x", False, False, True),          # a directory at any depth
    ("cache/", "src/cache", True, False, True),
    ("a/**/z", "a/z", False, False, True),                  # `/**/` is zero or more directories
    ("a/**/z", "a/b/c/z", False, True, True),
])
def test_the_four_patterns_whose_meaning_changed(pattern, path, is_dir, before, now):
    assert old_glob((pattern,))(path) is before
    assert Excluder([pattern])(path, is_dir) is now
    assert meaning_change(pattern) is not None


@pytest.mark.parametrize("pattern", ["*.tmp", ".#*", "*~", "*.swp", "top", "/top", "a/b", "docs/*", "x/build",
                                     "src/**", "*.[ch]", "build"])
def test_patterns_that_worked_keep_their_meaning(pattern):
    assert meaning_change(pattern) is None
    old, new = old_glob((pattern,)), Excluder([pattern])
    for path, is_dir in TREE:
        assert new(path, is_dir) is old(path), (pattern, path)


@pytest.mark.parametrize("pattern", ["docs/*.pdf", "**/*.log", "cache/", "a/**/z", "*/build", "/a/", "x/*/c.log"])
def test_the_old_spelling_check_gives_matches_what_the_pattern_matched_before(pattern):
    change = meaning_change(pattern)
    assert change is not None and "close" not in change.old_meaning
    old, spelled = old_glob((pattern,)), Excluder([change.old_meaning])
    for path, is_dir in TREE:
        assert spelled(path, is_dir) is old(path), (pattern, change.old_meaning, path)


@pytest.mark.parametrize("pattern, fragment", [("!keep.tmp", "negation"), ("#x", "comment"),
                                               ("a\\b", "escaping"), ("x ", "trailing spaces"),
                                               ("[^a]b", "negated")])
def test_characters_gitignore_reads_otherwise_are_meaning_changes(pattern, fragment):
    change = meaning_change(pattern)
    assert change is not None and fragment in change.now
    assert old_glob((pattern,))(pattern.rstrip()) or pattern in ("x ", "[^a]b")
    if pattern == "[^a]b":
        old, spelled = old_glob((pattern,)), Excluder([change.old_meaning])
        for name in ("^b", "ab", "cb"):
            assert spelled(name, False) is old(name), name
    # The escaped spelling matches the literal name again.
    if pattern[0] in "!#":
        assert Excluder([change.old_meaning])(pattern, False)


def test_negation_re_includes_and_the_later_pattern_wins():
    ex = Excluder(["*.tmp", "!keep.tmp"])
    assert ex("x.tmp", False) and ex("d/x.tmp", False)
    assert not ex("keep.tmp", False) and not ex("docs/a/keep.tmp", False)
    # Later wins: excluded again by a pattern after the negation.
    ex = Excluder(["*.tmp", "!keep.tmp", "docs/**/keep.tmp"])
    assert not ex("keep.tmp", False) and ex("docs/a/keep.tmp", False)


def test_nothing_below_an_excluded_directory_is_re_included():
    ex = Excluder(["build/", "!build/keep"])
    assert ex("build", True) and ex("build/keep", False) and ex("build/other", False)
    # A re-included directory's files are matched on their own again.
    ex = Excluder(["*.log", "!important/"])
    assert not ex("important", True) and ex("important/x.log", False)


def test_a_leading_slash_anchors_at_the_source_root():
    ex = Excluder(["/top"])
    assert ex("top", False) and ex("top/x", False) and not ex("x/top", False)
    ex = Excluder(["top"])
    assert ex("top", False) and ex("x/top", False)


def test_a_trailing_slash_is_for_directories_only():
    ex = Excluder(["cache/"])
    assert ex("cache", True) and ex("src/cache", True) and ex("src/cache/x", False)
    assert not ex("cache", False) and not ex("src/cache", False) and not ex("src/cache.c", False)
    # Type unknown (a deleted path): excluded in either form, so never deleted on an event.
    assert ex("src/cache", None)


def test_the_daemons_own_names_cannot_be_re_included():
    ex = Excluder(["!.foldermirror.lock", "!.foldermirror-*.tmp", "!*"])
    for rel in (".foldermirror.lock", "d/.foldermirror.lock", ".foldermirror-ab12-7-000000000001.tmp",
                ".foldermirror-partial.tmp/big.bin", "d/.foldermirror-x-1-2.tmp"):
        assert ex(rel, False) and ex(rel, None) and Excluder([])(rel, False), rel
    assert not Excluder([])("a/b.txt", False) and not Excluder([])(".foldermirror", True)


def test_the_fast_search_agrees_with_gitignores_walk():
    # Without "!" one combined search decides; it must agree with the walk directory by directory.
    for patterns in (["*.log"], ["cache/", "/top", "a/**/z"], ["docs/*.pdf", "**/*.log", "x/*/"], ["*/", "**"],
                     ["a/**", "*.c", "src/cache"]):
        fast = Excluder(patterns)
        for path, is_dir in TREE:
            for kind in (is_dir, None):
                assert fast(path, kind) is fast._decide(path, kind), (patterns, path, kind)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_matches_what_git_check_ignore_says(tmp_path):
    sets = [["docs/*.pdf"], ["**/*.log"], ["cache/"], ["a/**/z"], ["*.tmp", "!keep.tmp"], ["/top"],
            ["build/", "!build/keep"], ["*.log", "!important/"], ["a/b"], ["*/build"], ["*", "!*.log", "!*/"],
            ["x/", "!x/y/"], ["\\#h", "#comment", ""], ["docs/**", "!docs/a/"]]
    for n, patterns in enumerate(sets):
        repo = tmp_path / str(n)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        for path, is_dir in TREE:
            (repo / path).mkdir(parents=True, exist_ok=True) if is_dir else (repo / path).touch()
        (repo / ".gitignore").write_text("\n".join(patterns) + "\n")
        args = [p for p, _ in TREE]  # git looks the type up on disk (a trailing "/" confuses check-ignore)
        out = subprocess.run(["git", "-C", str(repo), "check-ignore", "--no-index", "--stdin"],
                             input="\n".join(args) + "\n", capture_output=True, text=True).stdout
        ignored = set(out.splitlines())
        ex = Excluder(patterns)
        wrong = [p for p, d in TREE if ex(p, d) is not (p in ignored)]
        assert not wrong, (patterns, wrong)


def test_unreadable_patterns_are_refused():
    for bad in ("!", "\\"):
        with pytest.raises(filters.PatternError):
            Excluder([bad])


# -- exclude_from -----------------------------------------------------------------------------

def test_a_pattern_file_reads_as_gitignore():
    text = "# a comment\n\n*.o\n\\#literal\n!keep.o\ntrailing   \nescaped\\ \n  \n"
    assert parse_pattern_file(text) == ("*.o", "\\#literal", "!keep.o", "trailing   ", "escaped\\ ")
    ex = Excluder(parse_pattern_file(text))
    assert ex("a.o", False) and not ex("keep.o", False) and ex("#literal", False) and not ex("# a comment", False)
    assert ex("trailing", False) and ex("escaped ", False) and not ex("escaped", False)


def test_a_pattern_file_line_gitignore_cannot_read_names_its_line():
    with pytest.raises(filters.PatternError, match="line 3"):
        parse_pattern_file("a\n# b\n!\n")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "one").write_text("*.log\n")
    (tmp_path / "two.ignore").write_text("# keep the important one\n!important.log\n")
    return tmp_path


def test_exclude_from_files_are_read_relative_to_the_config_and_come_after_exclude(base):
    cfg = parse_config("folders:\n  - source: src\n    target: t\n    exclude: ['*.tmp', '!keep.tmp']\n"
                       "    exclude_from: [rules/one, two.ignore]\n", str(base / "c.yaml"))
    f = cfg.folders[0]
    assert [p.path for p in f.exclude_from] == [base / "rules" / "one", base / "two.ignore"]
    assert f.excludes == ("*.tmp", "!keep.tmp", "*.log", "!important.log")
    ex = Excluder(f.excludes)
    assert ex("a.log", False) and not ex("important.log", False) and not ex("keep.tmp", False)
    one = parse_config("folders:\n  - {source: src, target: t, exclude_from: rules/one}\n", str(base / "c.yaml"))
    assert one.folders[0].excludes == ("*.log",)


def test_exclude_from_wins_over_exclude(base):
    (base / "x.ignore").write_text("!*.log\n")
    cfg = parse_config("folders:\n  - {source: src, target: t, exclude: ['*.log'], exclude_from: x.ignore}\n",
                       str(base / "c.yaml"))
    assert not Excluder(cfg.folders[0].excludes)("a.log", False)


@pytest.mark.parametrize("value, key, fragment", [
    ("[rules/one, missing.ignore]", "folders[0].exclude_from[1]", "missing.ignore: No such file"),
    ("missing.ignore", "folders[0].exclude_from", "missing.ignore: No such file"),
    ("[rules]", "folders[0].exclude_from[0]", "Is a directory"),
    ("[bad.ignore]", "folders[0].exclude_from[0]", "line 2"),
    ("[latin1.ignore]", "folders[0].exclude_from[0]", "utf-8"),
])
def test_an_exclude_from_file_that_cannot_be_read_is_a_config_error_naming_it(base, value, key, fragment):
    (base / "bad.ignore").write_text("ok\n!\n")
    (base / "latin1.ignore").write_bytes(b"caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        parse_config(f"folders:\n  - source: src\n    target: t\n    exclude_from: {value}\n", str(base / "c.yaml"))
    assert info.value.exit_code == EXIT_CONFIG
    assert info.value.key == key and fragment in str(info.value), str(info.value)
    assert info.value.line == 4


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_exclude_from_file_is_a_config_error(base):
    (base / "rules" / "one").chmod(0)
    with pytest.raises(ConfigError, match="Permission denied"):
        parse_config("folders:\n  - {source: src, target: t, exclude_from: [rules/one]}\n", str(base / "c.yaml"))


def test_an_unreadable_exclude_pattern_is_a_config_error_with_its_key(base):
    with pytest.raises(ConfigError) as info:
        parse_config("folders:\n  - {source: src, target: t, exclude: ['*.tmp', '!']}\n", str(base / "c.yaml"))
    assert info.value.key == "folders[0].exclude[1]"


def test_a_changed_exclude_from_file_is_a_changed_folder_on_reload(base):
    path = base / "c.yaml"
    path.write_text("folders:\n  - {source: src, target: t, exclude_from: rules/one}\n")
    before = load_config(path)
    assert reload_plan({f.name: f for f in before.folders}, load_config(path).folders).changed == ()
    (base / "rules" / "one").write_text("*.log\n*.bak\n")
    after = load_config(path)
    assert reload_plan({f.name: f for f in before.folders}, after.folders).changed == ("src",)
    assert after.folders[0].excludes == ("*.log", "*.bak")


# -- telling of the change of meaning -----------------------------------------------------------

def test_check_says_what_each_changed_pattern_matched_before_and_now(base):
    cfg = parse_config("folders:\n  - {source: src, target: t, exclude: ['*.tmp', 'docs/*.pdf', 'cache/']}\n",
                       str(base / "c.yaml"))
    lines = exclude_changes(cfg)
    assert len(lines) == 2
    assert lines[0].startswith("folder src: exclude 'docs/*.pdf' changed meaning: before, ")
    assert "; now it matches " in lines[0] and "docs/x/y.pdf" in lines[0] and "'/docs/**/*.pdf'" in lines[0]
    assert "'cache/'" in lines[1] and "'/cache'" in lines[1]


def test_the_daemon_warns_once_per_folder_with_changed_patterns(base):
    (base / "b").mkdir()
    cfg = parse_config("folders:\n  - {source: src, target: t, exclude: ['*.tmp', '**/*.log', 'a/**/z']}\n"
                       "  - {source: b, target: tb, exclude: ['*.tmp']}\n", str(base / "c.yaml"))
    log = FakeLog()
    filters.warn_meaning_changed(log, cfg.folders)
    assert [(lvl, ev, f["folder"]) for lvl, ev, f in log.lines] == [("warning", "exclude_meaning_changed", "src")]
    fields = log.lines[0][2]
    assert fields["patterns"] == ["**/*.log", "a/**/z"] and fields["fix"] and fields["error"]
    assert fields["old_meaning"] == ["/*/**/*.log", "/a/*/**/z"]



# -- the comparison (catchup/compare.py) ---------------------------------------------------------

def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())


def test_the_comparison_passes_the_entry_type_prunes_and_never_deletes_an_excluded_path(tmp_path):
    from foldermirror.catchup.compare import WalkStats, diff_tree

    src, dst = tmp_path / "s", tmp_path / "t"
    _tree(src, ["cache/x", "other/cache", "keep.tmp", "x.tmp", "a/z", "plain"])
    _tree(dst, ["old.tmp", "gone/x.tmp", "gone/y", "gone/deep/z", "empty/y", "src/cache/k", "c"])
    (dst / "cache").mkdir()  # a directory the source has: excluded, never walked nor deleted
    ex = Excluder(["*.tmp", "!keep.tmp", "cache/", "a/**/z"])
    stats = WalkStats()
    diffs = {d.path: d.reason for d in diff_tree(str(src), str(dst), ex, True, "i", stats=stats)}
    assert diffs == {"other": "missing", "other/cache": "missing", "keep.tmp": "missing", "a": "missing",
                     "plain": "missing", "empty": "extra", "c": "extra",
                     # gone/ holds an excluded x.tmp: it stays, and what else is in it goes one by one;
                     # src/ holds src/cache/ (excluded): it stays.
                     "gone/y": "extra", "gone/deep": "extra"}
    assert stats.doomed == 2 + 1 + 2 + 1  # empty (and y), c, gone/y, gone/deep (and z)


# -- the watcher's handler (pipeline/watcher.py) -------------------------------------------------

class _Changes:
    def __init__(self) -> None:
        self.touched: list[str] = []
        self.moves: list[tuple[str, str]] = []

    def touch(self, folder: str, path: str, **_: object) -> None:
        self.touched.append(path)

    def moved(self, folder: str, src: str, dst: str, **_: object) -> None:
        self.moves.append((src, dst))


class _Sink:
    def __init__(self) -> None:
        self.subtrees: list[str] = []
        self.errors: list[BaseException] = []

    def subtree(self, folder: str, path: str) -> None:
        self.subtrees.append(path)

    def handler_error(self, folder: str, error: BaseException) -> None:
        self.errors.append(error)

    def watch_suspect(self, folder: str, path: str) -> None:
        pass


def test_the_watcher_passes_each_events_type_to_the_excluder(tmp_path):
    from fakes import folder
    from foldermirror.pipeline.intake import Kind
    from foldermirror.pipeline.watcher import _Handler

    f = folder("data", tmp_path, delete=True, exclude=("cache/", "*.tmp", "!keep.tmp"))
    root = str(f.source).encode()
    changes, sink = _Changes(), _Sink()
    handler = _Handler(f, changes, sink, lambda path: True)  # type: ignore[arg-type]
    for kind, path, is_dir, dest in (
            (Kind.CREATED, b"/src/cache", True, None), (Kind.CLOSED, b"/src/cache/x", False, None),
            (Kind.CLOSED, b"/other/cache", False, None), (Kind.DELETED, b"/cache", True, None),
            (Kind.DELETED, b"/gone/cache", False, None), (Kind.CLOSED, b"/x.tmp", False, None),
            (Kind.CLOSED, b"/keep.tmp", False, None), (Kind.CLOSED, b"/.foldermirror.lock", False, None),
            (Kind.MOVED, b"/a.txt", False, b"/a.tmp"), (Kind.MOVED, b"/d", True, b"/cache")):
        handler.handle(kind, root + path, is_dir, None if dest is None else root + dest)
    assert not sink.errors
    assert changes.touched == ["other/cache", "gone/cache", "keep.tmp", "a.txt", "d"]
    assert changes.moves == [] and sink.subtrees == []
