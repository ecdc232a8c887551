"""The operator's view, its pure parts: the tracer, folded repeats, fix texts, the console
format, the config keys. Against a real daemon: daemon/test_operator.py.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re

import pytest

from foldermirror import logs
from foldermirror.logs import Repeats, Tracer
from helpers import REPO


# -- logs ---------------------------------------------------------------------------------------
def test_tracer_follows_one_path_at_a_time_without_globs():
    now = [0.0]
    out = io.StringIO()
    logs.configure_logging("debug", "json", out)
    t = Tracer(logs.get_logger(), clock=lambda: now[0])
    for i in range(50):
        t.step("event", "f", f"p{i}")
    t.step("ready", "f", "p0")
    t.step("ready", "f", "p1")
    t.step("done", "f", "p0", status="copied")
    t.step("event", "f", "p2")           # within a second of the last: not picked
    now[0] = 1.5
    t.step("event", "f", "p3")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["path"], r["stage"]) for r in records] == [("p0", "event"), ("p0", "ready"), ("p0", "done"),
                                                          ("p3", "event")], records


def test_repeats_fold_identical_failures_within_the_window():
    now = [0.0]
    r = Repeats(window=60, clock=lambda: now[0])
    assert r.admit(("f", "ENOSPC"), "a") is True
    assert [r.admit(("f", "ENOSPC"), p) for p in "bcb"] == [False, False, False]
    assert r.admit(("f", "EACCES"), "a") is True       # another error is its own line
    assert r.due() == []
    assert r.next_due() == 60                          # the daemon sleeps until then (EACCES folded nothing)
    now[0] = 61
    (run,) = r.due()
    assert (run.key, run.count, run.paths, run.last_path) == (("f", "ENOSPC"), 3, ["b", "c"], "b")
    assert r.admit(("f", "ENOSPC"), "d") is True       # a new window starts with a full line
    assert r.next_due() is None
    assert r.due(flush=True) == []


def test_every_warning_and_error_says_what_to_do():
    events = []
    package = REPO / "daemon" / "foldermirror"
    files = sorted(package.rglob("*.py"))  # the subpackages too (pipeline/, catchup/, view/)
    assert {p.parent.name for p in files} >= {"foldermirror", "pipeline", "catchup", "view"}, files
    for path in files:
        source = path.read_text()
        for m in re.finditer(r"log\.(warning|error)\(\s*\"(\w+)\"(.*?)\)\n", source, re.S):
            events.append((str(path.relative_to(package)), m.group(2), "fix=" in m.group(3)))
    assert len(events) >= 25, events
    missing = [(file, name) for file, name, inline in events if not inline and name not in logs.FIXES]
    assert missing == []


def test_console_format_on_a_tty_is_aligned_and_coloured():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True
    out = Tty()
    logs.configure_logging("info", "auto", out)
    logs.get_logger().warning("source_missing", folder="photos", path="/srv/photos")
    logs.get_logger().info("file_mirrored", folder="photos", path="a")
    first, second = out.getvalue().splitlines()
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in (first, second)]
    assert "\x1b[" in first and "[warning" in plain[0] and "fix=" in plain[0]
    assert plain[0].index("folder=") < plain[0].index("fix=")  # in the order given, the fix last
    # Level and event name are padded, so the key=value pairs start in one column.
    assert plain[0].index("source_missing") == plain[1].index("file_mirrored")
    assert re.search(r" \w+=", plain[0]).start() == re.search(r" \w+=", plain[1]).start(), plain
    piped = io.StringIO()
    logs.configure_logging("info", "auto", piped)
    logs.get_logger().info("file_mirrored", folder="photos")
    assert json.loads(piped.getvalue())["event"] == "file_mirrored"


def test_json_lines_start_with_event_level_and_timestamp():
    out = io.StringIO()
    logs.configure_logging("info", "json", out)
    logs.get_logger().warning("source_missing", folder="photos", path="/srv/photos")
    line = out.getvalue()
    assert list(json.loads(line))[:3] == ["event", "level", "timestamp"], line
    assert line.startswith('{"event": "source_missing", "level": "warning", "timestamp": '), line


def test_a_json_lines_time_is_utc_to_the_microsecond_and_its_values_are_json():
    out = io.StringIO()
    logs.configure_logging("info", "json", out)
    before = datetime.datetime.now(datetime.UTC)
    logs.get_logger().info("file_mirrored", path="caf\u00e9\n\udcff", ratio=1.5, size=None, pair=(1, 2), obj=object())
    after = datetime.datetime.now(datetime.UTC)
    line = json.loads(out.getvalue())
    stamp = line["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    assert before <= datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after, (before, stamp, after)
    assert (line["path"], line["ratio"], line["size"], line["pair"]) == ("caf\u00e9\n\udcff", 1.5, None, [1, 2])
    assert line["obj"].startswith("<object object at "), "what JSON cannot hold is written as its repr"


def test_under_systemd_each_line_carries_its_journald_priority(tmp_path, monkeypatch):
    journal = (tmp_path / "journal").open("w")
    st = os.fstat(journal.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    logs.configure_logging("debug", "json", journal)
    log = logs.get_logger()
    log.debug("pipeline_step")
    log.info("file_mirrored")
    log.warning("file_busy")
    log.error("mirror_failed")
    journal.close()
    lines = (tmp_path / "journal").read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"], lines
    assert [json.loads(line[3:])["event"] for line in lines] == ["pipeline_step", "file_mirrored", "file_busy",
                                                                 "mirror_failed"]
    # A child that inherited the variable but writes elsewhere (a pipe, a file) gets plain lines.
    elsewhere = io.StringIO()
    logs.configure_logging("info", "json", elsewhere)
    logs.get_logger().info("file_mirrored")
    assert elsewhere.getvalue().startswith("{"), elsewhere.getvalue()
    other = (tmp_path / "other").open("w")
    assert not logs.writes_to_journal(other)
    assert logs.writes_to_journal(other, {"JOURNAL_STREAM": f"{os.fstat(other.fileno()).st_dev}:"
                                                            f"{os.fstat(other.fileno()).st_ino}"})
    other.close()


@pytest.mark.parametrize("top, message", [
    ("metrics: {listen: localhost}", "1:19: metrics.listen: expected host:port such as 127.0.0.1:9108"),
    ("metrics: {listen: '127.0.0.1:70000'}", "metrics.listen: port must be between 0 and 65535, got '70000'"),
    ("metrics: {listen: '::1:9108'}", "metrics.listen: write an IPv6 address in brackets"),
    ("metrics: {}", "metrics.listen: missing: give host:port"),
    ("control_socket: /" + "s" * 120, "1:17: control_socket: '/sss"),
    ("log: {trace: []}", ""),
])
def test_operator_config_keys_are_validated(tmp_path, top, message):
    from foldermirror.config import parse_config
    from foldermirror.errors import ConfigError

    src = tmp_path / "src"
    src.mkdir()
    text = f"{top}\nfolders: [{{source: {src}, target: {tmp_path / 'dst'}}}]\n"
    if not message:
        assert parse_config(text, "c.yaml").log.trace == ()
        return
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml")
    assert message in str(err.value), str(err.value)


def test_operator_config_keys_parse(tmp_path):
    from foldermirror.config import parse_config

    src = tmp_path / "src"
    src.mkdir()
    c = parse_config(f"control_socket: ctl.sock\nmetrics: {{listen: '[::1]:0'}}\nlog: {{trace: '*.jpg'}}\n"
                     f"folders: [{{source: {src}, target: {tmp_path / 'dst'}}}]\n", str(tmp_path / "c.yaml"))
    assert c.control_socket == tmp_path / "ctl.sock" and c.log.trace == ("*.jpg",)
    assert (c.metrics.host, c.metrics.port, c.metrics.listen) == ("::1", 0, "[::1]:0")
