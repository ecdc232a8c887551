"""The command line: check, sync, --help, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, pair, tree_diff, write_config

ENV = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}


def fm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foldermirror", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout, stdin=subprocess.DEVNULL)


def test_check_prints_resolved_pairs(tmp_path):
    src, dst, spec = pair(tmp_path, delete=True, exclude=["*.tmp"])
    r = fm("check", "--config", str(write_config(tmp_path, [spec])))
    assert r.returncode == 0, r.stderr
    assert str(src) in r.stdout and str(dst) in r.stdout and "*.tmp" in r.stdout and "delete:  true" in r.stdout


def test_demo_config_is_valid():
    r = fm("check", "--config", str(REPO / "config" / "demo.yaml"))
    assert r.returncode == 0, r.stderr
    assert "demo/source" in r.stdout


@pytest.mark.parametrize("command", ["run", "check", "sync"])
def test_config_errors_exit_78_with_one_message(tmp_path, command):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("workers: \"four\"\nfolders: []\n")
    r = fm(command, "--config", str(cfg))
    assert r.returncode == 78, r
    assert f"{cfg}:1:10: workers: expected a whole number, got 'four'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config_exits_78(tmp_path):
    r = fm("run", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 78 and "config file not found" in r.stderr


@pytest.mark.parametrize("command", ["run", "check", "sync"])
def test_help_explains_every_option(command):
    r = fm(command, "--help")
    assert r.returncode == 0
    assert "--config" in r.stdout and "FILE" in r.stdout


def test_sync_catches_up_once_and_exits(tmp_path):
    src, dst, spec = pair(tmp_path, delete=True)
    for i in range(200):
        (src / f"d{i % 7}").mkdir(exist_ok=True)
        (src / f"d{i % 7}" / f"f{i}").write_bytes(os.urandom(i))
    dst.mkdir()
    (dst / "extra").write_bytes(b"not in the source")
    r = fm("sync", "--config", str(write_config(tmp_path, [spec])))
    assert r.returncode == 0, r.stderr
    assert tree_diff(src, dst) == []
    events = [json.loads(line)["event"] for line in r.stderr.splitlines() if line.startswith("{")]
    assert "sync_finished" in events and "daemon_ready" not in events
    finished = [json.loads(line) for line in r.stderr.splitlines() if '"sync_finished"' in line][0]
    assert finished["files"] >= 200
    again = fm("sync", "--config", str(write_config(tmp_path, [spec])))
    again_finished = [json.loads(line) for line in again.stderr.splitlines() if '"sync_finished"' in line][0]
    assert again_finished["files"] == 0 and again_finished["differences"] == 0


def test_sync_reports_failures_with_exit_1(tmp_path):
    src, dst, spec = pair(tmp_path)  # delete: false, so a conflicting target file is kept
    (src / "sub").mkdir()
    (src / "sub" / "f").write_bytes(b"x")
    (src / "fine").write_bytes(b"fine")
    dst.mkdir()
    (dst / "sub").write_bytes(b"a file where the source has a folder")
    r = fm("sync", "--config", str(write_config(tmp_path, [spec])))
    assert r.returncode == 1, r.stderr
    failed = [json.loads(line) for line in r.stderr.splitlines() if '"mirror_failed"' in line]
    assert failed and failed[0]["path"].startswith("sub") and failed[0]["will_retry"] is False, failed
    assert (dst / "fine").read_bytes() == b"fine"
    assert (dst / "sub").read_bytes() == b"a file where the source has a folder"
