"""Config validation: every error names the file, line, key and cause."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from foldermirror.config import load_config, parse_config, parse_duration
from foldermirror.errors import EXIT_CONFIG, ConfigError


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    return tmp_path


def error_of(text: str, base: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, str(base / "c.yaml"))
    assert info.value.exit_code == EXIT_CONFIG
    return info.value


def test_minimal_config_resolves_paths_relative_to_the_file(base):
    cfg = parse_config("folders:\n  - source: src\n    target: out/copy\n", str(base / "c.yaml"))
    f = cfg.folders[0]
    assert f.source == base / "src" and f.target == base / "out" / "copy"
    assert f.name == "src" and f.delete is False and f.settle == 0.25 and f.exclude == ()
    assert cfg.workers == (os.cpu_count() or 1) and cfg.rescan_interval == 3600


def test_all_keys(base):
    cfg = parse_config(
        "workers: 3\nrescan_interval: 10m\nstop_grace: 5s\nlog: {level: debug, format: json}\n"
        "folders:\n  - name: photos\n    source: src\n    target: dst\n    delete: true\n"
        "    exclude: ['*.tmp', 'a/b']\n    settle: 100ms\n    durable: true\n",
        str(base / "c.yaml"))
    f = cfg.folders[0]
    assert (cfg.workers, cfg.rescan_interval, cfg.stop_grace) == (3, 600, 5)
    assert (cfg.log.level, cfg.log.format) == ("debug", "json")
    assert (f.name, f.delete, f.exclude, f.settle, f.durable) == ("photos", True, ("*.tmp", "a/b"), 0.1, True)


@pytest.mark.parametrize("text, key, line, fragment", [
    ("workers: four\nfolders: [{source: src, target: dst}]", "workers", 1, "whole number"),
    ("workers: 0\nfolders: [{source: src, target: dst}]", "workers", 1, "at least 1"),
    ("folders:\n  - source: src\n    target: dst\n    delet: true\n", "folders[0].delet", 4, "did you mean 'delete'"),
    ("folder:\n  - source: src\n", "folder", 1, "did you mean 'folders'"),
    ("folders:\n  - source: src\n    target: dst\n    target: other\n", "folders[0].target", 4, "duplicate key"),
    ("workers: !!python/object/apply:os.system ['true']\nfolders: []", "workers", 1, "not allowed"),
    ("folders:\n  - source: nowhere\n    target: dst\n", "folders[0].source", 2, "does not exist"),
    ("folders:\n  - source: afile\n    target: dst\n", "folders[0].source", 2, "not a directory"),
    ("folders:\n  - source: src\n    target: src\n", "folders[0].target", 3, "source itself"),
    ("folders:\n  - source: src\n    target: src/copy\n", "folders[0].target", 3, "inside its source"),
    ("folders:\n  - source: src\n    target: .\n", "folders[0].target", 3, "contains its source"),
    ("folders:\n  - {source: src, target: t}\n  - {name: two, source: src, target: t}\n",
     "folders[1].target", 3, "the same as"),
    ("folders:\n  - {source: src, target: t}\n  - {name: two, source: src, target: t/inner}\n",
     "folders[1].target", 3, "nested with"),
    ("folders:\n  - {source: src, target: a}\n  - {source: src, target: b}\n", "folders[1].name", 3, "already used"),
    ("folders:\n  - source: src\n    target: dst\n    settle: soon\n", "folders[0].settle", 4, "duration"),
    ("folders:\n  - source: src\n    target: dst\n    delete: yes please\n", "folders[0].delete", 4, "true or false"),
    ("folders:\n  - source: src\n", "folders[0].target", 2, "missing"),
    ("log:\n  level: loud\nfolders: [{source: src, target: dst}]", "log.level", 2, "one of"),
    ("folders: []\n", "folders", 1, "non-empty"),
    ("workers: 2\n", "folders", 1, "missing"),
])
def test_errors_name_line_and_key(base, text, key, line, fragment):
    err = error_of(text, base)
    assert err.key == key, str(err)
    assert err.line == line, str(err)
    assert fragment in str(err), str(err)
    assert str(err).startswith(str(base / "c.yaml") + f":{line}:")


def test_invalid_yaml_gives_line_and_column(base):
    err = error_of("folders:\n  - source: [src\n", base)
    assert err.line is not None and err.column is not None
    assert "invalid YAML" in str(err)


def test_symlinked_source_is_resolved_so_target_inside_is_caught(base):
    os.symlink(base / "src", base / "link")
    err = error_of("folders:\n  - source: link\n    target: src/copy\n", base)
    assert "inside its source" in str(err)


def test_missing_empty_and_directory_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


def test_create_true_allows_a_missing_source(base):
    cfg = parse_config("folders:\n  - source: later\n    target: dst\n    create: true\n", str(base / "c.yaml"))
    assert cfg.folders[0].source == base / "later"


@pytest.mark.parametrize("raw, seconds", [(1, 1.0), (0.5, 0.5), ("250ms", 0.25), ("10s", 10.0),
                                          ("5m", 300.0), ("1h", 3600.0), ("0", 0.0), ("2d", 172800.0)])
def test_durations(raw, seconds):
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", [True, "fast", "-1s", "1 week", -3, float("nan"), float("inf"), float("-inf"),
                                 10 ** 400, "9" * 400 + "s", "367d", 366 * 86400 + 1, "nan", "infs"])
def test_bad_durations(raw):
    with pytest.raises(ValueError):
        parse_duration(raw)


def test_the_longest_duration():
    assert parse_duration("366d") == 366 * 86400


# -- files that must be refused, never crash: each error names line, column and key --------------------

PAIR = "folders:\n  - source: src\n    target: dst\n"   # lines 1-3; a folder key added after it is on line 4
LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
BILLION_LAUGHS = "l0: &l0 lol\n" + LAUGHS + PAIR


def located(text: str, base: Path, key: str | None, line: int, column: int | None = None) -> str:
    """The message of the ConfigError `text` raises, checked to start with file:line:column: key:."""
    err = error_of(text, base)
    message = str(err)
    assert (err.key, err.line) == (key, line), message
    assert err.column is not None, message
    if column is not None:
        assert err.column == column, message
    prefix = f"{base / 'c.yaml'}:{line}:{err.column}: " + (f"{key}: " if key else "")
    assert message.startswith(prefix), message
    assert "Traceback" not in message
    return message


@pytest.mark.parametrize("text, key, line, column, fragments", [
    # a tag on a list item, block and flow, with the hint to quote the pattern
    (PAIR + "    exclude:\n      - !keep.tmp\n", "folders[0].exclude[0]", 5, 9,
     ["YAML tag '!keep.tmp' is not allowed", 'write it in quotes: "!keep.tmp"']),
    (PAIR + "    exclude: [!keep.tmp]\n", "folders[0].exclude[0]", 4, 15, ['write it in quotes: "!keep.tmp"']),
    (PAIR + "    exclude: [a, !keep.tmp, b]\n", "folders[0].exclude[1]", 4, 18, ['write it in quotes: "!keep.tmp"']),
    ("log:\n  trace:\n    - !!python/object/apply:os.system ['touch /tmp/never']\n" + PAIR,
     "log.trace[0]", 3, 7, ["'!!python/object/apply:os.system' is not allowed"]),
    ("log: {trace: !!python/object/apply:os.system ['true']}\n" + PAIR, "log.trace", 1, 14, ["not allowed"]),
    # nested: in a list in a list, and on a whole folder mapping
    (PAIR + "    exclude: [a, [b, !!binary aGk=]]\n", "folders[0].exclude[1][1]", 4, 22, ["'!!binary'"]),
    ("folders:\n  - !!python/object/new:os.system {source: src, target: dst}\n", "folders[0]", 2, 5,
     ["'!!python/object/new:os.system' is not allowed"]),
    # on a key
    ("!foo workers: 2\n" + PAIR, "workers", 1, 1, ["YAML tag '!foo' is not allowed"]),
    (PAIR + "    !!python/name:os.system exclude: []\n", "folders[0].exclude", 4, 5, ["not allowed"]),
    # anchors and aliases, the alias bomb first: refused at its first anchor, nothing expanded
    (BILLION_LAUGHS, "l0", 1, 5, ["YAML anchors (&name) cannot be used"]),
    (PAIR + "    exclude:\n      - *tmp\n", "folders[0].exclude[0]", 5, 9,
     ["YAML aliases (*name) cannot be used", 'write it in quotes: "*tmp"']),
    # duplicate keys, at the top, in log, in a folder
    ("workers: 2\nworkers: 3\n" + PAIR, "workers", 2, 1, ["duplicate key (first given on line 1)"]),
    ("log: {level: info, level: debug}\n" + PAIR, "log.level", 1, 20, ["duplicate key"]),
    # tabs where YAML wants spaces
    (PAIR + "\texclude: []\n", "folders[0]", 4, 1, ["'\\t'", "indent with spaces"]),
    # NUL and other control characters, raw and as an escape
    (PAIR + "    name: a\0b\n", "folders[0].name", 4, 12, ["a NUL character, which YAML does not allow"]),
    (PAIR + "    name: a\x01b\n", "folders[0].name", 4, 12, ["control character #x01"]),
    (PAIR + '    name: "a\\0b"\n', "folders[0].name", 4, 11, ["NUL character cannot be part of a value"]),
    (PAIR + '    exclude: ["\\ud800"]\n', "folders[0].exclude[0]", 4, 15, ["lone surrogate"]),
    # 5,000-character strings
    ("folders:\n  - source: " + "s" * 5000 + "\n    target: dst\n", "folders[0].source", 2, 13,
     ["a path can have at most 4095"]),
    ("folders:\n  - source: src\n    target: a/" + "t" * 300 + "\n", "folders[0].target", 3, 13,
     ["longer than 255 bytes"]),
    (PAIR + "    " + "k" * 1000 + ": 1\n", "folders[0]." + "k" * 40 + "…", 4, 5, ["unknown key"]),
    (PAIR + "    " + "k" * 5000 + ": 1\n", "folders[0]", 4, 5005, ["could not find expected ':'"]),
    (PAIR + "    settle: " + "9" * 5000 + "\n", "folders[0].settle", 4, 13, ["cannot read", "4300 digits"]),
    # huge numbers
    ("workers: 99999999999999999999999\n" + PAIR, "workers", 1, 10, ["at most 1024"]),
    (PAIR + "    settle: 99999999999999999999999\n", "folders[0].settle", 4, 13, ["at most 366d"]),
    ("rescan_interval: " + "9" * 400 + "d\n" + PAIR, "rescan_interval", 1, 18, ["at most 366d"]),
    (PAIR + "    max_delete_fraction: 99999999999999999999999\n", "folders[0].max_delete_fraction", 4, 26,
     ["from 0 to 1"]),
    ("metrics: {listen: '127.0.0.1:99999999999999999999999'}\n" + PAIR, "metrics.listen", 1, 19,
     ["between 0 and 65535"]),
    # .nan and .inf
    (PAIR + "    settle: .nan\n", "folders[0].settle", 4, 13, ["expected a duration"]),
    (PAIR + "    settle: .inf\n", "folders[0].settle", 4, 13, ["at most 366d"]),
    (PAIR + "    settle: -.inf\n", "folders[0].settle", 4, 13, ["cannot be negative"]),
    (PAIR + "    max_delete_fraction: .nan\n", "folders[0].max_delete_fraction", 4, 26, ["from 0 to 1"]),
    (PAIR + "    max_delete_fraction: .inf\n", "folders[0].max_delete_fraction", 4, 26, ["from 0 to 1"]),
    ("stop_grace: .inf\n" + PAIR, "stop_grace", 1, 13, ["at most 366d"]),
    ("rescan_interval: .NaN\n" + PAIR, "rescan_interval", 1, 18, ["expected a duration"]),
    ("workers: .nan\n" + PAIR, "workers", 1, 10, ["whole number"]),
    # dates are not durations
    (PAIR + "    settle: 2001-12-14\n", "folders[0].settle", 4, 13, ["expected a duration"]),
], ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_hostile_files_are_refused_with_line_column_and_key(base, text, key, line, column, fragments):
    message = located(text, base, key, line, column)
    for fragment in fragments:
        assert fragment in message, message


def test_the_alias_bomb_is_refused_quickly(base):
    import time

    start = time.monotonic()
    error_of(BILLION_LAUGHS, base)
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("text, line, column", [
    (PAIR + "---\n" + PAIR, 4, 1),
    (PAIR + "...\nworkers: 2\n", 5, 1),
    (PAIR + "---\n", 4, 1),
])
def test_several_documents_are_refused_where_the_second_starts(base, text, line, column):
    message = located(text, base, None, line, column)
    assert "a second YAML document starts here" in message or "exactly one YAML document" in message


@pytest.mark.parametrize("text, key, line, column, pattern", [
    (PAIR + "    exclude: [*.tmp]\n", "folders[0].exclude", 4, 16, "*.tmp"),
    (PAIR + "    exclude:\n      - *.tmp\n", "folders[0].exclude", 5, 10, "*.tmp"),
    (PAIR + "    exclude: [a, *~]\n", "folders[0].exclude", 4, 19, "*~"),
    ("log: {trace: [*.pdf]}\n" + PAIR, "log.trace", 1, 16, "*.pdf"),
    (PAIR + "    exclude: [!keep.tmp]\n", "folders[0].exclude[0]", 4, 15, "!keep.tmp"),
    (PAIR + "    exclude: [&x]\n", "folders[0].exclude[0]", 4, 15, "&x"),
])
def test_an_unquoted_star_or_bang_gets_the_quoted_form(base, text, key, line, column, pattern):
    message = located(text, base, key, line, column)
    assert f'write it in quotes: "{pattern}"' in message, message


def test_quoted_patterns_starting_with_bang_or_star_are_plain_strings(base):
    cfg = parse_config(PAIR + "    exclude: [\"!keep.tmp\", '*.tmp', '&x', \"!!python/x\"]\n"
                       "log: {trace: '*.pdf'}\n", str(base / "c.yaml"))
    assert cfg.folders[0].exclude == ("!keep.tmp", "*.tmp", "&x", "!!python/x")
    assert cfg.log.trace == ("*.pdf",)


def test_plain_tags_and_long_values_are_fine(base):
    cfg = parse_config(PAIR + "    name: !!str " + "n" * 5000 + "\n    exclude: [" + "e" * 5000 + "]\n"
                       "    delete: !!bool true\nworkers: !!int 3\n", str(base / "c.yaml"))
    assert cfg.folders[0].name == "n" * 5000 and cfg.folders[0].exclude == ("e" * 5000,)
    assert cfg.folders[0].delete is True and cfg.workers == 3


TOP_WRONG = [
    ("workers", "[1]"), ("workers", "'4'"), ("workers", "4.5"), ("workers", "true"), ("workers", "~"),
    ("rescan_interval", "[1h]"), ("rescan_interval", "true"), ("stop_grace", "{a: 1}"), ("stop_grace", "~"),
    ("log", "5"), ("log", "[info]"), ("log", "'info'"), ("control_socket", "5"), ("control_socket", "[a]"),
    ("control_socket", "~"), ("metrics", "'127.0.0.1:9108'"), ("metrics", "[1]"), ("folders", "5"),
    ("folders", "{source: src, target: dst}"), ("folders", "'src'"), ("folders", "~"),
]
LOG_WRONG = [("level", "5"), ("level", "[info]"), ("format", "{a: b}"), ("format", "true"),
             ("trace", "{a: b}"), ("trace", "5"), ("trace", "[[a]]"), ("trace", "[~]")]
FOLDER_WRONG = [
    ("name", "[a]"), ("name", "~"), ("name", "''"), ("source", "5"), ("source", "[src]"), ("target", "~"),
    ("target", "{a: b}"), ("delete", "'yes'"), ("delete", "1"), ("delete", "[true]"), ("exclude", "'*.tmp'"),
    ("exclude", "5"), ("exclude", "{a: b}"), ("exclude", "[1]"), ("exclude", "[[a]]"), ("exclude", "[~]"),
    ("settle", "true"), ("settle", "[1s]"), ("settle", "'soon'"), ("durable", "1"), ("durable", "~"),
    ("create", "'no'"), ("create", "[]"), ("max_delete_fraction", "'half'"), ("max_delete_fraction", "true"),
    ("max_delete_fraction", "[0.5]"), ("max_delete_fraction", "-0.1"),
]


@pytest.mark.parametrize("key, value", TOP_WRONG)
def test_wrong_type_at_each_top_key(base, key, value):
    text = f"{key}: {value}\n" + (PAIR if key != "folders" else "")
    located(text, base, key, 1, len(key) + 3)


@pytest.mark.parametrize("key, value", LOG_WRONG)
def test_wrong_type_at_each_log_key(base, key, value):
    item = "[0]" if value in ("[[a]]", "[~]") else ""
    message = located(f"log:\n  {key}: {value}\n" + PAIR, base, f"log.{key}{item}", 2)
    assert "expected" in message


@pytest.mark.parametrize("key, value", FOLDER_WRONG)
def test_wrong_type_at_each_folder_key(base, key, value):
    if key in ("source", "target"):
        other = "target: dst" if key == "source" else "source: src"
        text, line = f"folders:\n  - {other}\n    {key}: {value}\n", 3
    else:
        text, line = PAIR + f"    {key}: {value}\n", 4
    item = "[0]" if value in ("[1]", "[[a]]", "[~]") else ""
    message = located(text, base, f"folders[0].{key}{item}", line)
    assert "expected" in message, message


def test_metrics_listen_of_the_wrong_type(base):
    located("metrics:\n  listen: [1]\n" + PAIR, base, "metrics.listen", 2, 11)


def test_nesting_and_size_are_bounded(base, monkeypatch):
    message = located("x: " + "[" * 200 + "]" * 200 + "\n" + PAIR, base, "x" + "[0]" * 32, 1, 36)
    assert "nested more than 32 levels deep" in message
    import foldermirror.config as config

    monkeypatch.setattr(config, "MAX_NODES", 50)
    message = located(PAIR + "    exclude: [" + "a, " * 60 + "]\n", base, "folders[0].exclude[40]", 4, 135)
    assert "more than 50 values" in message


def test_the_number_of_folders_is_bounded(base, monkeypatch):
    import foldermirror.config as config

    monkeypatch.setattr(config, "MAX_FOLDERS", 2)
    text = "folders:\n" + "".join(f"  - {{source: src, target: t{i}, name: n{i}}}\n" for i in range(3))
    assert "at most 2 folder pairs, got 3" in located(text, base, "folders", 2, 3)


def test_an_unexpected_exception_becomes_a_config_error_naming_it(base, monkeypatch):
    import foldermirror.config as config

    def broken(value):
        raise RuntimeError("boom")

    monkeypatch.setattr(config, "_as_bool", broken)
    err = error_of(PAIR + "    delete: true\n", base)
    assert "RuntimeError('boom')" in str(err) and str(err).startswith(str(base / "c.yaml") + ": ")


def test_bytes_that_are_not_utf8_are_located(base):
    cfg = base / "c.yaml"
    cfg.write_bytes(PAIR.encode() + b"    name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    err = info.value
    assert (err.line, err.column, err.key) == (4, 14, "folders[0].name"), str(err)
    assert str(err).startswith(f"{cfg}:4:14: folders[0].name: not UTF-8 text: byte 0xe9"), str(err)


@pytest.mark.parametrize("encoding, fragment", [("utf-16", "UTF-16"), ("utf-32", "UTF-32"),
                                                ("utf-16-le", "looks like UTF-16")])
def test_utf16_and_utf32_files_are_refused(base, encoding, fragment):
    cfg = base / "c.yaml"
    cfg.write_bytes(PAIR.encode(encoding))
    with pytest.raises(ConfigError, match=fragment):
        load_config(cfg)


def test_a_utf8_bom_is_fine_and_a_huge_file_is_refused(base):
    cfg = base / "c.yaml"
    cfg.write_bytes(b"\xef\xbb\xbf" + PAIR.encode())
    assert load_config(cfg).folders[0].source == base / "src"
    cfg.write_bytes(PAIR.encode() + b"#" * (1 << 20))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(cfg)
