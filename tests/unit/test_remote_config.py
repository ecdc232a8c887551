"""Remote targets in the config: the ssh:// form, the ssh block and its per-host settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from foldermirror.config import parse_config
from foldermirror.errors import ConfigError
from foldermirror.remote.url import Link, parse


@pytest.mark.parametrize(("text", "link", "path", "dest"), [
    ("ssh://u@h:2222/srv/x/", Link("u", "h", 2222), "/srv/x", "u@h:/srv/x/"),
    ("ssh://h/a//b/../c", Link(None, "h", None), "/a/c", "h:/a/c/"),
    ("ssh://[::1]:22/x", Link(None, "::1", 22), "/x", "[::1]:/x/"),
])
def test_ssh_urls(text: str, link: Link, path: str, dest: str):
    url = parse(text)
    assert (url.link, url.path, url.rsync_dest) == (link, path, dest)


@pytest.mark.parametrize(("text", "says"), [
    ("ssh://h", "give the absolute path"),
    ("ssh://-oProxyCommand=x/p", "is not a host name"),
    ("sftp://h/x", "sftp:// targets are not supported"),
    ("ssh://h:0/x", "port must be a number from 1 to 65535"),
    ("ssh://h:99999/x", "port must be a number from 1 to 65535"),
    ("ssh://h/", "root of the remote file system"),
    ("ssh://a b@h/x", "not a user name"),
    ("ssh://[nope]/x", "not an IPv6 address"),
])
def test_bad_ssh_urls_say_what_is_wrong(text: str, says: str):
    with pytest.raises(ValueError, match=says):
        parse(text)


def config(tmp_path: Path, target: str, ssh: str = "") -> str:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "kh").write_text("")
    return f"{ssh}folders:\n  - {{name: data, source: src, target: '{target}'}}\n"


def test_a_remote_target_needs_a_known_hosts_file(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        parse_config(config(tmp_path, "ssh://backup/srv/m"), str(tmp_path / "c.yaml"))
    assert "ssh.known_hosts" in str(err.value) and "no trust on first use" in str(err.value)
    assert "ssh-keyscan backup" in str(err.value)


def test_per_host_settings_override_the_ssh_block(tmp_path: Path):
    text = config(tmp_path, "ssh://backup/srv/m",
                  "ssh:\n  known_hosts: kh\n  connections: 2\n  bwlimit: 10M\n"
                  "  hosts:\n    backup: {connections: 3, rsync_path: /opt/rsync}\n")
    c = parse_config(text, str(tmp_path / "c.yaml"))
    assert c.folders[0].remote is not None and c.folders[0].remote.link.host == "backup"
    backup, other = c.ssh.for_host("backup"), c.ssh.for_host("elsewhere")
    assert (backup.connections, backup.rsync_path, backup.bwlimit) == (3, "/opt/rsync", 10240)
    assert (other.connections, other.rsync_path) == (2, "rsync")


@pytest.mark.parametrize(("option", "says"), [
    ("ControlMaster=auto", "ControlMaster is set by the daemon itself"),
    ("StrictHostKeyChecking=no", "use known_hosts"),
    ("IdentityFile=/k", "use identity_file"),
    ("nonsense", "expected an ssh option as Name=value"),
])
def test_ssh_options_the_daemon_owns_are_refused(tmp_path: Path, option: str, says: str):
    text = config(tmp_path, "ssh://backup/srv/m", f"ssh:\n  known_hosts: kh\n  options: ['{option}']\n")
    with pytest.raises(ConfigError, match=says) as err:
        parse_config(text, str(tmp_path / "c.yaml"))
    assert "ssh.options[0]" in str(err.value)


def test_a_local_path_with_a_colon_stays_local(tmp_path: Path):
    c = parse_config(config(tmp_path, "host:/srv/m"), str(tmp_path / "c.yaml"))
    assert c.folders[0].remote is None and str(c.folders[0].target).endswith("host:/srv/m")


def test_nested_remote_targets_on_one_host_are_refused(tmp_path: Path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src2").mkdir()
    (tmp_path / "kh").write_text("")
    text = ("ssh: {known_hosts: kh}\nfolders:\n  - {name: a, source: src, target: 'ssh://h/m'}\n"
            "  - {name: b, source: src2, target: 'ssh://h/m/inner'}\n")
    with pytest.raises(ConfigError, match="nested with the target of folders"):
        parse_config(text, str(tmp_path / "c.yaml"))
