"""The parts of running under systemd that need no daemon and no systemd: the notifier
without a socket, the inotify watch count, PrivateTmp in config errors. The units and the
daemon under their protocol and sandbox: system/test_systemd.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from foldermirror import checks
from foldermirror.config import load_config
from helpers import pair, write_config


def test_notifier_without_socket_is_a_no_op(monkeypatch):
    from foldermirror.notify import Notifier

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.send("READY=1") is False
    n.ready("status")
    n.close()


def test_count_directories_follows_no_symlinks(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert checks.count_directories(str(tmp_path)) == 5


def test_watch_shortage_names_the_need_with_headroom(tmp_path):
    src, dst, spec = pair(tmp_path)
    for i in range(9):
        (src / f"d{i}").mkdir()
    folders = load_config(write_config(tmp_path, [spec])).folders
    assert checks.watch_shortage(folders, 10) is None
    short = checks.watch_shortage(folders, 9)
    assert short is not None and short.needed == 10 and short.limit == 9 and short.suggested >= 13
    assert checks.watch_shortage(folders, None) is None
    if "FOLDERMIRROR_FAULTS" not in os.environ:  # the real limit, as the kernel states it
        assert checks.max_user_watches() == int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())


def test_missing_source_under_tmp_explains_private_tmp(tmp_path, monkeypatch):
    from foldermirror.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"folders": [{"source": str(tmp_path / "gone"), "target": "/srv/x"}]}))
    with pytest.raises(ConfigError) as plain:
        load_config(cfg)
    assert "PrivateTmp" not in str(plain.value)
    monkeypatch.setenv("INVOCATION_ID", "0" * 32)
    with pytest.raises(ConfigError) as under_systemd:
        load_config(cfg)
    assert "PrivateTmp=yes" in str(under_systemd.value) and "folders[0].source" in str(under_systemd.value)


@pytest.mark.parametrize(("error", "names"), [
    ("setpriv: activate capabilities: Operation not permitted", "systemd/remote-targets.conf"),
    ("ssh: connect to host 127.0.0.1 port 22: failure", "systemd/remote-targets.conf"),
    ("ssh: connect to host 127.0.0.1 port 22: Connection timed out", "IPAddressAllow="),
])
def test_a_link_stopped_by_the_units_sandbox_gets_a_fix_naming_the_drop_in(error, names):
    # The messages as seen: the units' ~@privileged denies setpriv's capset(2) (systemd 252,
    # systemd_e2e.sh check 11), RestrictAddressFamilies=AF_UNIX ssh's socket() (confine.py,
    # where setpriv is missing), an IPAddressAllow= list without the host drops its packets
    # (check 13).
    from foldermirror.remote.links import _fix

    assert names in _fix(error), _fix(error)
