"""Each setting is declared once: the docs, `check` and the reader all follow the declarations."""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import pytest

from foldermirror import config as config_module
from foldermirror.cli import describe
from foldermirror.config import (
    Config,
    FolderConfig,
    Setting,
    flag,
    format_duration,
    globs,
    parse_config,
    parse_duration,
    section,
    setting,
    settings,
)
from foldermirror.errors import ConfigError
from helpers import REPO

# A key, possibly after a list dash: "  - name: photos", "    settle: 250ms", "log:".
_KEY_LINE = re.compile(r"^( *)(- +)?([a-z_]+):(?:\s|$)")


def declared_paths(cls: type = Config, prefix: str = "") -> dict[str, Setting]:
    """Every setting as the path an example file writes it at: workers, log.level, folders[].name."""
    out: dict[str, Setting] = {}
    for name, s in settings(cls).items():
        path = f"{prefix}{name}"
        out[path] = s
        if s.section is not None:
            out.update(declared_paths(s.section, path + ("[]." if s.many else ".")))
    return out


def mentioned_paths(lines: list[str]) -> set[str]:
    """The key paths a YAML file mentions, commented-out keys included ("# trace: [...]").

    Nesting is read from indentation; a key under a list dash is written folders[].name.
    """
    found: set[str] = set()
    stack: list[list] = []   # [indent, path, holds list items]
    for raw in lines:
        line = raw
        hash_at = line.find("#")
        if hash_at >= 0 and not line[:hash_at].strip():
            # Uncomment it: "#   listen: x" sits where "  listen: x" would.
            line = line[:hash_at] + line[hash_at + 1:]
            line = line[:hash_at] + line[hash_at + 1:] if line[hash_at:hash_at + 1] == " " else line
        m = _KEY_LINE.match(line)
        if m is None:
            continue
        indent = len(m.group(1)) + len(m.group(2) or "")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1] if stack else None
        if parent is not None and m.group(2):
            parent[2] = True
        prefix = "" if parent is None else parent[1] + ("[]." if parent[2] else ".")
        path = prefix + m.group(3)
        found.add(path)
        stack.append([indent, path, False])
    return found


def readme_config_yaml() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Configuration\n")
    end = text.index("\n## ", start + 1)
    lines: list[str] = []
    for block in re.findall(r"```yaml\n(.*?)```", text[start:end], re.S):
        lines += block.splitlines()
    assert lines, "README's Configuration section has no ```yaml block"
    return lines


DOCUMENTS = {
    "config/example.yaml": lambda: (REPO / "config" / "example.yaml").read_text(encoding="utf-8").splitlines(),
    "README.md's Configuration section": readme_config_yaml,
}


@pytest.mark.parametrize("document", sorted(DOCUMENTS))
def test_every_setting_is_documented(document):
    mentioned = mentioned_paths(DOCUMENTS[document]())
    missing = sorted(set(declared_paths()) - mentioned)
    unknown = sorted(mentioned - set(declared_paths()))
    assert not missing, f"{document} does not mention {', '.join(missing)} (add it, as `key:` or `# key:`)"
    assert not unknown, f"{document} mentions keys that are not settings: {', '.join(unknown)}"


def test_every_setting_has_a_doc():
    for path, s in declared_paths().items():
        assert s.doc.strip(), f"{path} has an empty doc"


def test_the_example_key_reader_follows_nesting_and_comments():
    lines = ["top: 1", "# commented: 2", "log:", "  level: x  # inline: no", "  # trace: [a]",
             "# metrics:", "#   listen: 127.0.0.1:9", "# Prose: is not a key, nor is this: one",
             "folders:", "  - name: a", "    source: b", "    exclude:", '      - "*.tmp"', "  - name: c"]
    assert mentioned_paths(lines) == {"top", "commented", "log", "log.level", "log.trace", "metrics",
                                      "metrics.listen", "folders", "folders[].name", "folders[].source",
                                      "folders[].exclude"}


def test_the_example_file_is_valid(tmp_path):
    # The shipped example, with its folders pointed at ones that exist, reads without an error.
    text = (REPO / "config" / "example.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(source|target): /srv/(\S+)", lambda m: f"{m.group(1)}: {tmp_path}/{m.group(2)}", text)
    for line in re.findall(rf"source: ({re.escape(str(tmp_path))}\S+)", text):
        os.makedirs(line)
    cfg = parse_config(text, str(tmp_path / "c.yaml"))
    assert [f.name for f in cfg.folders] == ["photos", "documents"]


# -- defaults come from the declarations ---------------------------------------------------------

def declared_default(cls: type, name: str):
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


def test_a_minimal_config_gets_every_declared_default(tmp_path):
    (tmp_path / "photos").mkdir()
    cfg = parse_config("folders: [{source: photos, target: copy}]\n", str(tmp_path / "c.yaml"))
    for name in settings(Config):
        if name != "folders":
            assert getattr(cfg, name) == declared_default(Config, name), name
    f = cfg.folders[0]
    for name, s in settings(FolderConfig).items():
        if s.required is None and s.derive is None:
            assert getattr(f, name) == declared_default(FolderConfig, name), name
    assert f.name == "photos" and cfg.workers == (os.cpu_count() or 1)
    assert (f.settle, f.max_delay, f.max_delete_fraction) == (0.25, 5.0, 0.5)
    assert (cfg.rescan_interval, cfg.stop_grace) == (3600.0, 10.0)
    assert config_module.DEFAULT_RESCAN == 3600.0 and config_module.DEFAULT_STOP_GRACE == 10.0


# -- check prints every setting ------------------------------------------------------------------

def test_describe_prints_the_demo_config_setting_by_setting():
    cfg = config_module.load_config(REPO / "config" / "demo.yaml")
    demo = REPO / "config" / "demo"
    assert describe(cfg).splitlines() == [
        f"config: {REPO / 'config' / 'demo.yaml'}",
        f"workers:         {os.cpu_count() or 1}",
        "rescan_interval: 1h",
        "stop_grace:      10s",
        "control_socket:  (default: $RUNTIME_DIRECTORY/control.sock, else /run/foldermirror/control-HASH.sock)",
        "log:",
        "  level:  info",
        "  format: auto",
        "  trace:  (none)",
        "metrics:",
        "  listen: (off)",
        "ssh:",
        "  identity_file:   (ssh's default keys)",
        "  known_hosts:     (none)",
        "  connections:     1",
        "  connect_timeout: 10s",
        "  keepalive:       5s",
        "  io_timeout:      1m",
        "  retry_min:       1s",
        "  retry_max:       1m",
        "  compress:        false",
        "  bwlimit:         (none)",
        "  rsync_path:      rsync",
        "  options:         (none)",
        "  hosts:           (none)",
        "folders[0]:",
        "  name:                demo",
        f"  source:              {demo / 'source'}",
        f"  target:              {demo / 'copy'}",
        "  delete:              true",
        "  exclude:             (none)",
        "  settle:              250ms",
        "  durable:             false",
        "  create:              true",
        "  max_delete_fraction: 0.5",
        "  max_delay:           5s",
        "  preserve:            xattrs, acls, hardlinks, sparse, owner",
    ]


def test_describe_shows_every_setting_with_its_own_formatter(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    cfg = parse_config(
        "workers: 3\nrescan_interval: 90m\nstop_grace: 1500ms\ncontrol_socket: ctl.sock\n"
        "log: {level: debug, format: json, trace: ['*.pdf', 'x/*']}\nmetrics: {listen: '[::1]:0'}\n"
        "folders:\n  - {source: a, target: ca, exclude: ['*.tmp', '*~'], settle: 0, max_delay: 1d,"
        " durable: true, max_delete_fraction: 0.25}\n  - {name: second, source: b, target: cb}\n",
        str(tmp_path / "c.yaml"))
    lines = describe(cfg).splitlines()
    for expected in ["workers:         3", "rescan_interval: 90m", "stop_grace:      1500ms",
                     f"control_socket:  {tmp_path / 'ctl.sock'}", "  level:  debug", "  format: json",
                     "  trace:  *.pdf, x/*", "  listen: [::1]:0", "folders[0]:", "  name:                a",
                     "  exclude:             *.tmp, *~", "  settle:              0s", "  max_delay:           1d",
                     "  durable:             true", "  delete:              false",
                     "  max_delete_fraction: 0.25", "folders[1]:", "  name:                second",
                     f"  target:              {tmp_path / 'cb'}"]:
        assert expected in lines, "\n".join(lines)
    # One line per setting (and one header per section), each folder's name first.
    shown = [line.strip().split(":")[0] for line in lines[1:]]
    per_folder = list(settings(FolderConfig))
    assert shown == [*(n for n, s in settings(Config).items() if s.section is None), "log",
                     *settings(config_module.LogConfig), "metrics", *settings(config_module.MetricsConfig),
                     "ssh", *settings(config_module.SshConfig), "folders[0]", *per_folder, "folders[1]", *per_folder]
    assert per_folder[0] == "name"


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (0.25, "250ms"), (0.1, "100ms"), (1, "1s"), (10, "10s"),
                                           (1.5, "1500ms"), (90, "90s"), (300, "5m"), (3600, "1h"),
                                           (5400, "90m"), (86400, "1d"), (366 * 86400, "366d"),
                                           (0.0015, "0.0015s"), (0.00001, "0.00001s"), (123.456, "123456ms")])
def test_durations_are_shown_as_they_would_be_written(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


# -- the mechanism takes nested mappings and lists -------------------------------------------------

@dataclass(frozen=True)
class Remote:
    host: str = setting("the host", config_module._read_text, required="missing: give the host")
    compress: bool = flag(True, "compress on the wire")


@dataclass(frozen=True)
class Pair:
    keep: tuple[str, ...] = globs("patterns kept")
    remote: Remote | None = section(Remote, "copy over ssh", default=None, unset="(local)")


def read_pair(text: str, tmp_path: Path) -> Pair:
    file = str(tmp_path / "c.yaml")
    loader = config_module._compose_loader(text, file)
    try:
        reader = config_module._Reader(file, loader, tmp_path)
        return reader.section(Pair, loader.get_single_node(), "folders[0]")[0]
    finally:
        loader.dispose()


def test_a_new_nested_setting_is_one_declaration(tmp_path):
    assert read_pair("keep: [a, b]\nremote: {host: h}\n", tmp_path) == Pair(("a", "b"), Remote("h", True))
    assert read_pair("keep: []\n", tmp_path) == Pair((), None)
    for text, key, fragment in [
        ("remote: {compres: false, host: h}\n", "folders[0].remote.compres", "did you mean 'compress'?"),
        ("remote: {compress: false}\n", "folders[0].remote.host", "missing: give the host"),
        ("remote: {host: h, compress: 1}\n", "folders[0].remote.compress", "expected true or false"),
        ("keep: a\n", "folders[0].keep", "expected a list of glob patterns"),
        ("keep: [a, [b]]\n", "folders[0].keep[1]", "expected a single value"),
    ]:
        with pytest.raises(ConfigError) as info:
            read_pair(text, tmp_path)
        assert info.value.key == key and fragment in str(info.value), str(info.value)
        assert info.value.line == 1 and info.value.column is not None


def test_a_reload_names_the_changed_settings_that_take_a_restart(tmp_path):
    text = "workers: {w}\nrescan_interval: {r}\nfolders:\n  - {{name: data, source: s, target: t, create: true}}\n"
    old = parse_config(text.format(w=2, r="1h"), str(tmp_path / "c.yaml"))
    assert old.needs_restart(parse_config(text.format(w=2, r="5m"), str(tmp_path / "c.yaml"))) == []
    assert old.needs_restart(parse_config(text.format(w=3, r="5m"), str(tmp_path / "c.yaml"))) == ["workers"]
    assert {k for k, s in settings(Config).items() if s.restart} == {"workers", "control_socket", "metrics"}
