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


@pytest.mark.parametrize("raw", [True, "fast", "-1s", "1 week", -3])
def test_bad_durations(raw):
    with pytest.raises(ValueError):
        parse_duration(raw)
