"""Remote targets end to end: a real daemon mirrors over a real OpenSSH server on 127.0.0.1
(tests/sshd.py) with rsync, and the remote tree (here on this machine) is compared with
the source by the same oracle as a local target's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (
    PROMTOOL,
    fm,
    promtool_problems,
    remote_pair,
    remote_temps,
    samples,
    scrape_text,
    status,
    tree_diff,
    wait_mirrored,
    wait_settled,
    wait_until,
    write_config,
)
from sshd import SshServer, ssh_config_block

pytestmark = pytest.mark.timeout(180)


def test_a_remote_target_is_mirrored_live_and_at_start(tmp_path: Path, sshd: SshServer, daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "before.txt").write_text("there before the start")
    (src / "sub").mkdir()
    (src / "sub" / "deep.bin").write_bytes(os.urandom(100_000))
    d = daemon_factory(write_config(tmp_path, [folder], ssh=ssh_config_block(sshd), log={"level": "debug"}))
    d.wait_for("remote_up", 30)
    d.wait_ready(60)
    wait_mirrored(src, dst, 30)
    # Live: create, replace, odd names, delete, a directory tree gone, a rename.
    (src / "new.txt").write_text("new")
    (src / "before.txt").write_text("replaced")
    odd = ["with\nnewline", "-leading-dash", "spa ce", os.fsdecode(b"latin-\xe9")]
    for name in odd:
        (src / name).write_bytes(os.fsencode(name))
    (src / "sub" / "deep.bin").unlink()
    (src / "sub").rmdir()
    wait_mirrored(src, dst, 30)
    wait_settled(d.config)
    (src / "new.txt").rename(src / "renamed.txt")
    wait_mirrored(src, dst, 30)
    renamed = d.wait_for("file_mirrored", 10, path="renamed.txt")
    assert renamed[-1].get("renamed_from") == "new.txt", renamed
    deleted = {e["path"] for e in d.events("file_deleted")}
    assert {"sub", "sub/deep.bin"} <= deleted, d.tail()
    assert remote_temps(dst) == []
    assert d.stop() == 0
    assert tree_diff(src, dst) == []


def test_a_remote_folder_waits_while_its_host_is_down_and_catches_up(tmp_path: Path, sshd: SshServer,
                                                                       daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "a").write_text("a")
    config = write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), "keepalive": "1s",
                                                   "retry_min": "250ms", "retry_max": "1s"})
    d = daemon_factory(config)
    d.wait_ready(60)
    wait_mirrored(src, dst, 30)
    sshd.stop()
    line = d.wait_for("remote_down", 30)[0]
    assert line["retry_in_s"] > 0 and line["fix"], line
    for i in range(20):
        (src / f"while-down-{i}").write_text(str(i))
    (src / "a").unlink()
    d.wait_for("remote_retry", 30)
    folder_status = status(config)["folders"][0]
    assert folder_status["state"] == "remote_down" and folder_status["link"]["state"] == "down", folder_status
    assert folder_status["link"]["last_error"] and any("cannot be reached" in p for p in folder_status["problems"])
    sshd.restart()
    d.wait_for("remote_up", 30, reconnect=True)
    wait_mirrored(src, dst, 60)
    link = wait_until(lambda: (lambda f: f["link"] if f["state"] == "in_sync" else None)(status(config)["folders"][0]),
                      30, lambda: str(status(config)["folders"][0]))
    assert link["state"] == "up" and link["reconnects"] == 1 and link["rtt_ms"] > 0, link
    assert remote_temps(dst) == []
    assert d.stop() == 0


def test_sync_to_a_remote_target_and_its_dry_run(tmp_path: Path, sshd: SshServer):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "x").write_text("x")
    (src / "d").mkdir()
    (src / "d" / "y").write_text("y")
    config = write_config(tmp_path, [folder], ssh=ssh_config_block(sshd))
    dry = fm("sync", "--dry-run", "--config", str(config))
    assert dry.returncode == 0, dry.stderr
    assert "copy  x" in dry.stdout and "copy  d/y" in dry.stdout, dry.stdout
    listed = fm("sync", "--dry-run", "--json", "--exit-code", "--config", str(config))
    assert listed.returncode == 1, listed.stderr
    assert [json.loads(line) for line in listed.stdout.splitlines()] == [
        {"folder": "data", "action": "copy", "path": p, "kind": kind, "bytes": size, "reason": "missing"}
        for p, kind, size in (("d", "directory", None), ("d/y", "file", 1), ("x", "file", 1))], listed.stdout
    done = fm("sync", "--config", str(config), "--log-format", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert tree_diff(src, dst) == []
    dry = fm("sync", "--dry-run", "--config", str(config))
    assert "in sync" in dry.stdout, dry.stdout
    clean = fm("sync", "--dry-run", "--json", "--exit-code", "--config", str(config))
    assert (clean.returncode, clean.stdout) == (0, ""), clean


def test_check_proves_the_remote_side_without_creating_anything(tmp_path: Path, sshd: SshServer):
    _, dst, folder = remote_pair(tmp_path, sshd)
    config = write_config(tmp_path, [folder], ssh=ssh_config_block(sshd))
    done = fm("check", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = next(line for line in done.stdout.splitlines() if line.startswith("folder data:"))
    assert "remote rsync 3." in verdict and f"run creates it in {tmp_path}" in verdict, verdict
    assert "owners and groups kept" in verdict, verdict  # the fixture logs in as root
    assert not dst.exists()


def test_check_exits_78_for_a_host_key_missing_or_not_matching(tmp_path: Path, sshd: SshServer):
    _, _, folder = remote_pair(tmp_path, sshd)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    config = write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), "known_hosts": str(empty)})
    done = fm("check", "--config", str(config))
    assert done.returncode == 78, done.stdout + done.stderr
    assert f"ssh-keyscan -H -p {sshd.port} 127.0.0.1" in done.stdout, done.stdout
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30)
    wrong = tmp_path / "wrong_known_hosts"
    kind, blob = (tmp_path / "other_key.pub").read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    config = write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), "known_hosts": str(wrong)})
    done = fm("check", "--config", str(config))
    assert done.returncode == 78, done.stdout + done.stderr
    assert "does not match" in done.stdout, done.stdout


def test_check_and_run_refuse_a_host_without_rsync(tmp_path: Path, sshd: SshServer, daemon_factory):
    src, _, folder = remote_pair(tmp_path, sshd)
    (src / "a").write_text("a")
    local_src, local_dst, local = tmp_path / "l-src", tmp_path / "l-dst", None
    local_src.mkdir()
    (local_src / "b").write_text("b")
    local = {"name": "local", "source": str(local_src), "target": str(local_dst)}
    config = write_config(tmp_path, [folder, local],
                          ssh={**ssh_config_block(sshd), "rsync_path": "/nonexistent/rsync"})
    done = fm("check", "--config", str(config))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "/nonexistent/rsync is not installed on 127.0.0.1" in done.stdout, done.stdout
    d = daemon_factory(config)
    line = d.wait_for("folder_unusable", 30, folder="data")[0]
    assert "/nonexistent/rsync is not installed" in line["error"] and line["fix"], line
    wait_mirrored(local_src, local_dst, 30)  # the other folder is served
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_check_says_an_unreachable_host_is_proved_later(tmp_path: Path, sshd: SshServer):
    _, _, folder = remote_pair(tmp_path, sshd)
    config = write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), "connect_timeout": "2s"})
    sshd.stop()
    done = fm("check", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cannot be reached now" in done.stdout and "proved once the daemon connects" in done.stdout, done.stdout


@pytest.mark.parametrize("merged", [False, True], ids=["pass-per-directory", "one-pass"])
def test_a_batch_deletes_nested_paths_in_either_delete_mode(tmp_path: Path, sshd: SshServer, merged: bool):
    """mirror_batch in-process against the real server: the per-directory delete passes that
    receivers older than 3.4.4 need, and the single pass newer ones take, end alike."""
    from foldermirror.config import parse_config
    from foldermirror.pipeline.records import FolderSpec, Status, WorkItem
    from foldermirror.remote.batch import mirror_batch
    from foldermirror.remote.links import remote_spec

    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    for rel in ("keep/a", "old/x/y", "old/z", "top", "keep/gone"):
        for root in (src, dst):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(rel)
        os.utime(dst / rel, ns=(0, (src / rel).stat().st_mtime_ns))
    for rel in ("old/x/y", "old/z", "top", "keep/gone"):
        (src / rel).unlink()
    (src / "old" / "x").rmdir()
    (src / "old").rmdir()
    (src / "keep" / "new").write_text("new")
    config = parse_config(yaml_config(folder, sshd), str(tmp_path / "c.yaml"))
    remote = remote_spec(config.folders[0], config.ssh, sockets=())._replace(merged_delete=merged)
    spec = FolderSpec(str(src), str(dst), True, False, None, remote)
    paths = ["old/x/y", "old/z", "old", "top", "keep/gone", "keep/new"]
    results = mirror_batch(spec, [WorkItem(i, spec, p) for i, p in enumerate(paths)])
    said = {o.path: o.status for r in results for o in r.outcomes}
    assert said["keep/new"] is Status.COPIED and said["top"] is Status.DELETED, said
    assert said["keep/gone"] is Status.DELETED and said["old"] is Status.DELETED, said
    assert tree_diff(src, dst) == []


def yaml_config(folder: dict, server: SshServer) -> str:
    import yaml
    return yaml.safe_dump({"ssh": ssh_config_block(server), "folders": [folder]})


def test_renames_chained_and_a_directory_moved_are_replayed(tmp_path: Path, sshd: SshServer, daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    (src / "dir").mkdir()
    for i in range(5):
        (src / "dir" / f"f{i}").write_bytes(os.urandom(1000))
    (src / "a").write_text("a")
    d = daemon_factory(write_config(tmp_path, [folder], ssh=ssh_config_block(sshd)))
    d.wait_ready(60)
    wait_mirrored(src, dst, 30)
    (src / "a").rename(src / "b")
    (src / "b").rename(src / "c")
    (src / "dir").rename(src / "moved")
    wait_mirrored(src, dst, 30)
    assert remote_temps(dst) == []
    assert d.events("mirror_failed") == [], d.tail()


def test_a_file_is_only_ever_seen_whole_under_its_name_on_the_remote_side(tmp_path: Path, sshd: SshServer,
                                                                           daemon_factory):
    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    d = daemon_factory(write_config(tmp_path, [folder], ssh={**ssh_config_block(sshd), "bwlimit": 1000}))
    d.wait_ready(60)
    dst.mkdir(exist_ok=True)
    data = os.urandom(2 << 20)  # about 2 s at 1000 KiB/s: many looks at it mid-transfer
    (src / "big.bin").write_bytes(data)
    names: set[str] = set()
    torn: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for entry in os.scandir(dst):
            names.add(entry.name)
            if entry.name == "big.bin":
                size = entry.stat().st_size
                if size != len(data):
                    torn.append(size)
        if (dst / "big.bin").exists() and (dst / "big.bin").stat().st_size == len(data):
            break
    assert torn == [], f"big.bin was visible with {torn[:5]} bytes of {len(data)}"
    assert (dst / "big.bin").read_bytes() == data
    others = names - {"big.bin"}
    assert others and all(n.startswith(".big.bin.") or n.startswith(".foldermirror-") for n in others), names


def test_many_folders_on_one_host_share_one_login(tmp_path: Path, sshd: SshServer, daemon_factory):
    folders, pairs = [], []
    for i in range(20):
        src, dst, folder = remote_pair(tmp_path, sshd, name=f"f{i:02d}")
        (src / "x").write_text(str(i))
        folders.append(folder)
        pairs.append((src, dst))
    d = daemon_factory(write_config(tmp_path, folders, ssh=ssh_config_block(sshd),
                                    metrics={"listen": "127.0.0.1:0"}))
    d.wait_ready(90)
    for src, dst in pairs:
        wait_mirrored(src, dst, 30)
    assert sshd.logins() == 1, sshd.log()[-2000:]
    assert len(d.events("remote_up")) == 1
    text = scrape_text(d.wait_for("metrics_listening")[0]["listen"])
    metrics = samples(text)
    host = (("host", f"root@127.0.0.1:{sshd.port}"),)
    assert metrics["foldermirror_remote_up"][host] == 1, metrics.get("foldermirror_remote_up")
    assert metrics["foldermirror_remote_rtt_seconds"][host] > 0
    assert metrics["foldermirror_remote_reconnects_total"][host] == 0
    if PROMTOOL is not None:  # the remote families too (test_operator lints a local daemon's, or skips)
        assert promtool_problems(text) == "", text


def test_a_batch_for_a_source_root_that_is_not_the_watched_one_touches_nothing(tmp_path: Path, sshd: SshServer):
    """An unmounted source shows the empty directory beneath: its paths all look deleted."""
    from foldermirror.config import parse_config
    from foldermirror.pipeline.records import FolderSpec, Status, WorkItem
    from foldermirror.remote.batch import mirror_batch
    from foldermirror.remote.links import remote_spec

    src, dst, folder = remote_pair(tmp_path, sshd, delete=True)
    dst.mkdir()
    (dst / "precious").write_text("mirrored before")
    config = parse_config(yaml_config(folder, sshd), str(tmp_path / "c.yaml"))
    remote = remote_spec(config.folders[0], config.ssh, sockets=())
    st = os.stat(src)
    spec = FolderSpec(str(src), str(dst), True, False, (st.st_dev, st.st_ino + 1), remote)
    (result,) = mirror_batch(spec, [WorkItem(0, spec, "precious")])
    assert [o.status for o in result.outcomes] == [Status.ROOT_CHANGED], result
    assert (dst / "precious").read_text() == "mirrored before"
