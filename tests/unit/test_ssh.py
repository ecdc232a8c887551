"""The ssh command lines (remote/ssh.py): the cipher order offered, and who decides it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from foldermirror.remote.ssh import (
    AES_FIRST,
    SshParams,
    ciphers_in_effect,
    cpu_has_aes,
    direct_argv,
    master_argv,
    session_argv,
    wants_aes_first,
)
from foldermirror.remote.url import Link

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client (.ci/run installs one)")


def params(*, aes_first: bool, options: tuple[str, ...] = ()) -> SshParams:
    return SshParams(Link("mirror", "backup.example", 2222), "/etc/fm/known_hosts", None, 10.0, 5.0, False, options,
                     aes_first=aes_first)


def option_values(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1].partition("=")[2] for i, word in enumerate(argv[:-1])
            if word == "-o" and argv[i + 1].partition("=")[0].lower() == name.lower()]


@pytest.mark.parametrize("argv", [lambda p: master_argv(p, "/run/s"), lambda p: session_argv(p, "/run/s"),
                                  direct_argv])
def test_aes_gcm_is_offered_first_where_the_cpu_has_aes_instructions(argv):
    assert option_values(argv(params(aes_first=True)), "Ciphers") == [AES_FIRST]
    assert option_values(argv(params(aes_first=False)), "Ciphers") == [], "without them ssh's own order stays"


def test_the_order_offered_is_openssh_s_default_set_reordered():
    """A server that takes ssh's default ciphers takes these: nothing added, nothing left out."""
    default = {"chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr",
               "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"}
    names = AES_FIRST.split(",")
    assert set(names) == default and len(names) == len(default)
    assert names[0] == "aes128-gcm@openssh.com"


@pytest.mark.parametrize("given", ["Ciphers=chacha20-poly1305@openssh.com", "ciphers=aes256-ctr"])
def test_a_cipher_list_in_the_config_s_ssh_options_wins(given):
    """The config writes each option as Name=value, the name as the user spelled it."""
    argv = master_argv(params(aes_first=True, options=(given,)), "/run/s")
    assert option_values(argv, "Ciphers") == [given.partition("=")[2]], "only the user's list is given"


@pytest.mark.parametrize(("text", "has"), [
    ("processor\t: 0\nflags\t\t: fpu vme sse2 aes avx2\n", True),
    ("processor\t: 0\nflags\t\t: fpu vme sse2 avx2 vaes\n", False),  # vaes alone is not the flag
    ("processor\t: 0\nFeatures\t: fp asimd aes pmull sha1\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd\n", False),
    ("", False),
])
def test_cpu_has_aes_reads_the_flags_of_proc_cpuinfo(tmp_path: Path, text: str, has: bool):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    assert cpu_has_aes(str(info)) is has


def test_cpu_has_aes_is_false_when_cpuinfo_cannot_be_read(tmp_path: Path):
    assert cpu_has_aes(str(tmp_path / "missing")) is False


@needs_ssh
def test_ssh_s_own_cipher_set_is_the_one_reordered():
    """`ssh -G` of a plain link names OpenSSH's default set (this machine's ssh_config sets
    no Ciphers): the same set AES_FIRST orders, so the daemon offers it."""
    assert ciphers_in_effect(params(aes_first=False)) == frozenset(AES_FIRST.split(","))
    assert wants_aes_first(params(aes_first=False), has_aes=True)
    assert not wants_aes_first(params(aes_first=False), has_aes=False)


@needs_ssh
def test_a_cipher_list_set_for_ssh_is_left_as_it_is():
    """A Ciphers= that narrows the set (here in ssh.options; an ssh_config's reads the same
    through `ssh -G`) is never widened again by the daemon's order."""
    narrowed = params(aes_first=False, options=("Ciphers=aes256-gcm@openssh.com",))
    assert ciphers_in_effect(narrowed) == frozenset({"aes256-gcm@openssh.com"})
    assert not wants_aes_first(narrowed, has_aes=True)
