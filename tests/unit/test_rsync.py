"""foldermirror.remote.rsync: the command lines it builds, and its reading of what rsync prints.

The parsing tests read lines captured from real runs (rsync 3.5.0 on both sides unless said,
the remote side started through a stand-in for ssh that runs the command here: FAKE_RSH), with
the argv this module builds. The end-to-end tests run the local rsync that way too.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from foldermirror import tempnames
from foldermirror.remote import rsync as R
from foldermirror.remote.rsync import Action, FileError, Kind, Mode, OutLine, RsyncExit

RSYNC = shutil.which("rsync")
needs_rsync = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
# rsync runs it as `FAKE_RSH [-l USER] HOST COMMAND...`; like sshd, it runs the command
# through a shell, here.
FAKE_RSH = """#!/bin/sh
if [ "$1" = "-l" ]; then shift 2; fi
shift
exec sh -c "$*"
"""
SRC, DST = "/w/src", "/w/dst"  # the roots of the captured lines


# -- command lines ------------------------------------------------------------------------------------

def test_dest_brackets_ipv6_and_refuses_what_rsync_or_ssh_would_misread():
    assert R.dest("host", "/m/") == "host:/m/"
    assert R.dest("host.example", "/m", user="me") == "me@host.example:/m"
    assert R.dest("::1", "/m", user="me") == "me@[::1]:/m"
    assert R.dest("[fe80::1%eth0]", "/m") == "[fe80::1%eth0]:/m"
    assert R.dest("h", "/m", user="a@b") == "a@b@h:/m"  # rsync splits at the last '@'
    for host in ("", "-oProxyCommand=x", "a/b", "u@h", "a b"):
        with pytest.raises(ValueError):
            R.dest(host, "/m")
    for user in ("", "-x", "a:b", "a/b"):
        with pytest.raises(ValueError):
            R.dest("h", "/m", user=user)
    with pytest.raises(ValueError):
        R.dest("h", "relative/path")


def test_a_transfer_pass_lists_its_flags_and_ends_with_the_roots():
    cmd = R.argv(mode=Mode.TRANSFER, source_root="/src/", host="::1", user="me", remote_root="/m/root/",
                 ssh=["ssh", "-i", "/k/my key"], rsync_path=["sudo", "rsync"], timeout_s=60, bwlimit=500,
                 compress=True, fsync=True)
    assert cmd[0] == "rsync" and cmd[-3:] == ["--", "/src/", "me@[::1]:/m/root/."]
    flags = cmd[1:-3]
    assert flags[0] == "-lptO" and "-a" not in flags and "-r" not in flags and "-D" not in flags
    assert {"-8", "-s", "--files-from=-", "--from0", "--force", "-z", "--fsync", "--bwlimit=500",
            "--timeout=60", "--out-format=%i %l %n", "--partial-dir=.foldermirror-partial.tmp",
            "--exclude=.foldermirror.lock", "--exclude=.foldermirror-*.tmp", "--rsync-path=sudo rsync"} <= set(flags)
    assert flags[flags.index("-e") + 1] == "ssh -i '/k/my key'"
    for absent in ("-o", "-g", "-n", "--delete-missing-args", "--delete", "--inplace", "--append"):
        assert absent not in flags
    assert tempnames.is_reserved(R.PARTIAL_DIR)  # the daemon already knows it as its own


def test_each_mode_and_setting_adds_its_own_flags():
    def flags(**kw: object) -> list[str]:
        return R.argv(**{"source_root": "/s", "host": "h", "remote_root": "/r", **kw})  # type: ignore[arg-type]

    delete = flags(mode=Mode.DELETE)
    assert "--delete-missing-args" in delete and "--force" in delete and delete[-2:] == ["/s/", "h:/r/."]
    assert "--force" not in flags(mode=Mode.TRANSFER, delete=False)  # delete: false keeps a directory in the way
    with pytest.raises(ValueError):
        flags(mode=Mode.DELETE, delete=False)
    assert {"-o", "-g"} <= set(flags(mode=Mode.TRANSFER, preserve_owner=True))
    assert "-n" in flags(mode=Mode.TRANSFER, dry_run=True)
    assert "--partial-dir" not in " ".join(flags(mode=Mode.TRANSFER, partial_dir=None))
    # A pass inside a directory: its paths are relative to it.
    assert flags(mode=Mode.DELETE, base="a/b")[-2:] == ["/s/a/b/", "h:/r/a/b/."]
    compare = flags(mode=Mode.COMPARE)
    assert {"-n", "-r", "--delete"} <= set(compare) and "--files-from=-" not in compare
    assert compare[-2:] == ["/s/", "h:/r/."]  # the remote root must exist
    assert flags(mode=Mode.COMPARE, base="sub")[-2:] == ["/s/sub/", "h:/r/sub/"]  # a missing subtree is listed
    assert "--delete" not in flags(mode=Mode.COMPARE, delete=False)
    assert flags(mode=Mode.TRANSFER, remote_root="/")[-1] == "h:/."
    # Versions: what a pass replaces or deletes moves to the area as PATH~STAMP (relative to its base).
    kept = flags(mode=Mode.DELETE, base="a/b", backup_dir="/v/", backup_suffix="~20261201T000000.000000Z")
    assert kept[kept.index("--backup"):kept.index("--backup") + 3] == [
        "--backup", "--backup-dir=/v/a/b", "--suffix=~20261201T000000.000000Z"]
    assert "--backup" not in flags(mode=Mode.COMPARE, backup_dir="/v", backup_suffix="~x")
    for bad_backup in ({"backup_dir": "v", "backup_suffix": "~x"}, {"backup_dir": "/v"}):
        with pytest.raises(ValueError):
            flags(mode=Mode.TRANSFER, **bad_backup)
    for bad in ({"source_root": "rel"}, {"remote_root": "rel"}, {"base": "../x"}, {"base": "a/"},
                {"ssh": "ssh -p 22"}, {"ssh": []}, {"rsync_path": "rsync"}, {"bwlimit": 0},
                {"timeout_s": 0}, {"partial_dir": "a/b"}):
        with pytest.raises(ValueError):
            flags(**{"mode": Mode.TRANSFER, **bad})


def test_files_from_is_nul_separated_bytes_and_refuses_what_rsync_would_widen():
    odd = os.fsdecode(b"lat\xe9")  # not UTF-8: a surrogate escape, back to the same byte
    assert R.files_from(["a", "new\nline", "-dash", f"d/{odd}", "with space"]) == \
        b"a\0new\nline\0-dash\0d/lat\xe9\0with space\0"
    assert R.files_from([]) == b""
    for bad in ("", ".", "./a", "a/..", "/abs", "dir/", "a//b", "nul\0", ".foldermirror.lock",
                "d/.foldermirror-partial.tmp/f", "x/.foldermirror-i-1-abc.tmp"):
        with pytest.raises(ValueError):
            R.files_from([bad])


def test_deletion_list_keeps_the_topmost_missing_path_and_by_directory_groups_names():
    present = {"a", "a/b", "keep"}
    asked: list[str] = []

    def exists(path: str) -> bool:
        asked.append(path)
        return path in present

    got = R.deletion_list(["gone/x/y", "a/b/c", "gone/z", "a/b/d", "top", "gone", "a/x/y"], exists)
    assert got == ["a/b/c", "a/b/d", "a/x", "gone", "top"]
    assert len(asked) == len(set(asked))  # each ancestor looked at once
    assert R.by_directory(["a/b/c", "a/b/d", "top", "x/y"]) == {"a/b": ["c", "d"], "": ["top"], "x": ["y"]}


# -- stdout lines --------------------------------------------------------------------------------------

# A transfer pass into an empty remote; listed: the files, "link" (to "plain"), "emptydir" (a
# directory whose child was not listed) and "dir/deep/f" (whose parents were not).
TRANSFER_OUT = [
    (b"<f+++++++++ 5 -dash", "-dash", Kind.FILE, Action.SENT, 5),
    (b"<f+++++++++ 14 back\\#134#012slash", "back\\#012slash", Kind.FILE, Action.SENT, 14),
    (b"<f+++++++++ 4 lat\xe9", os.fsdecode(b"lat\xe9"), Kind.FILE, Action.SENT, 4),
    (b"cL+++++++++ 5 link", "link", Kind.SYMLINK, Action.CREATED, 5),
    (b"<f+++++++++ 8 new\\#012line", "new\nline", Kind.FILE, Action.SENT, 8),
    (b'<f+++++++++ 6 quo"te', 'quo"te', Kind.FILE, Action.SENT, 6),
    (b"<f+++++++++ 8 tab\there", "tab\there", Kind.FILE, Action.SENT, 8),
    (b"<f+++++++++ 10 with space", "with space", Kind.FILE, Action.SENT, 10),
    (b"cd+++++++++ 4096 dir/", "dir", Kind.DIR, Action.CREATED, 4096),
    (b"cd+++++++++ 4096 dir/deep/", "dir/deep", Kind.DIR, Action.CREATED, 4096),
    (b"<f+++++++++ 10 dir/deep/f", "dir/deep/f", Kind.FILE, Action.SENT, 10),
    (b"cd+++++++++ 4096 emptydir/", "emptydir", Kind.DIR, Action.CREATED, 4096),
    # Then: "plain" chmod 600, "with space" rewritten longer.
    (b".f...p..... 5 plain", "plain", Kind.FILE, Action.ATTRS, 5),
    (b"<f.s....... 14 with space", "with space", Kind.FILE, Action.SENT, 14),
    # Then a delete pass listing "dir" (a tree), "plain", "link" and "never_was".
    (b"*deleting   0 dir/deep/f", "dir/deep/f", Kind.UNKNOWN, Action.DELETED, 0),
    (b"*deleting   0 dir/deep/", "dir/deep", Kind.DIR, Action.DELETED, 0),
    (b"*deleting   0 dir/", "dir", Kind.DIR, Action.DELETED, 0),
    (b"*deleting   0 link", "link", Kind.UNKNOWN, Action.DELETED, 0),
    # A local copy (`rsync -lptO -r --out-format=... l1/ l2/`, no remote shell) says ">" for
    # a sent file and shows the new root as "./"; again with -ii, the unchanged items come
    # with spaces.
    (b">f+++++++++ 10 plain", "plain", Kind.FILE, Action.SENT, 10),
    (b".d          4096 sub/", "sub", Kind.DIR, Action.ATTRS, 4096),
    (b"cd+++++++++ 4096 ./\n", "", Kind.DIR, Action.CREATED, 4096),
]


@pytest.mark.parametrize(("line", "path", "kind", "action", "size"), TRANSFER_OUT)
def test_parse_line_reads_itemized_lines(line, path, kind, action, size):
    got = R.parse_line(line)
    assert got is not None
    assert (got.path, got.kind, got.action, got.size) == (path, kind, action, size)
    assert got.code == line[:11].decode()
    assert got.new == (b"+++++++++" in line)


def test_parse_line_puts_the_base_in_front_and_rejects_rsyncs_other_stdout_lines():
    assert R.parse_line(b"cd+++++++++ 4096 child/", base="emptydir") == \
        OutLine("cd+++++++++", Kind.DIR, Action.CREATED, 4096, "emptydir/child")
    assert R.parse_line(b".d...p..... 4096 ./", base="a/b").path == "a/b"  # type: ignore[union-attr]
    for other in (b"created directory /w/dst/nope", b"cannot delete non-empty directory: way",
                  b'skipping non-regular file "fifo"', b"", b"sending incremental file list",
                  b"<f+++++++++ x name", b"<x+++++++++ 1 name"):
        assert R.parse_line(other) is None


def test_unescape_undoes_rsyncs_octal_escapes_only():
    assert R.unescape(b"a\\#012b\\#351\\#134#012") == b"a\nb\xe9\\#012"
    assert R.unescape(b"keep \\#8 and \\x") == b"keep \\#8 and \\x"


# -- stderr lines --------------------------------------------------------------------------------------

def _e(role: str, op: str, path: str, code: int | None, message: str, temp: bool = False) -> FileError:
    return FileError(role, op, path, code, message, temp)


# Captured with the roots renamed to /w/src and /w/dst. How each was made:
ERRORS = [
    # The remote rsync as nobody (--rsync-path="setpriv --reuid=65534 ... rsync"), "ro" a
    # directory of root's in a target of nobody's.
    (b'rsync: [receiver] mkstemp "/w/dst/ro/.f.pYtgL6" failed: Permission denied (13)',
     _e("receiver", "mkstemp", "/w/dst/ro/.f.pYtgL6", 13, "Permission denied", True), "ro/f"),
    (b'rsync: [receiver] mkstemp "/w/dst/ro/.new\\#012line.4J9j8f" failed: Permission denied (13)',
     _e("receiver", "mkstemp", "/w/dst/ro/.new\nline.4J9j8f", 13, "Permission denied", True), "ro/new\nline"),
    (b'rsync: [receiver] mkstemp "/w/dst/ro/.lat\\#351 x.aGDg2s" failed: Permission denied (13)',
     _e("receiver", "mkstemp", os.fsdecode(b"/w/dst/ro/.lat\xe9 x.aGDg2s"), 13, "Permission denied", True),
     os.fsdecode(b"ro/lat\xe9 x")),
    (b'rsync: [generator] symlink "/w/dst/ro/link" -> "f" failed: Permission denied (13)',
     _e("generator", "symlink", "/w/dst/ro/link", 13, "Permission denied"), "ro/link"),
    (b'rsync: [generator] recv_generator: mkdir "/w/dst/ro/newdir" failed: Permission denied (13)',
     _e("generator", "recv_generator: mkdir", "/w/dst/ro/newdir", 13, "Permission denied"), "ro/newdir"),
    (b"rsync: [generator] delete_file: unlink(ro/gone) failed: Permission denied (13)",
     _e("generator", "delete_file: unlink", "ro/gone", 13, "Permission denied"), "ro/gone"),
    # A listed path that is not in the source (a transfer pass).
    (b'rsync: [sender] link_stat "/w/src/nothere" failed: No such file or directory (2)',
     _e("sender", "link_stat", "/w/src/nothere", 2, "No such file or directory"), "nothere"),
    # The local rsync as nobody, a source file of mode 000.
    (b'rsync: [sender] send_files failed to open "/w/src/ok/secret": Permission denied (13)',
     _e("sender", "send_files failed to open", "/w/src/ok/secret", 13, "Permission denied"), "ok/secret"),
    # A file deleted while a big one before it was sent (--bwlimit).
    (b'file has vanished: "/w/src/b_vanish"',
     _e("", "file has vanished", "/w/src/b_vanish", errno.ENOENT, "file has vanished"), "b_vanish"),
    # The target a 1 MiB tmpfs, a 2 MB file.
    (b'rsync: [receiver] write failed on "/w/dst/big": No space left on device (28)',
     _e("receiver", "write failed on", "/w/dst/big", 28, "No space left on device"), "big"),
    # The target file chattr +i.
    (b'rsync: [receiver] rename "/w/dst/sub/.f.IPD7UM" -> "sub/f": Operation not permitted (1)',
     _e("receiver", "rename", "sub/f", 1, "Operation not permitted"), "sub/f"),
    # A file in the source, a non-empty directory in the target, no --force (delete: false);
    # the first of the two lines is on stdout.
    (b"cannot delete non-empty directory: way",
     _e("", "cannot delete non-empty directory", "way", errno.ENOTEMPTY, "cannot delete non-empty directory"), "way"),
    (b"could not make way for new regular file: way",
     _e("", "could not make way for new regular file", "way", None, "could not make way for new regular file"), "way"),
    # A FIFO in the source of a compare (stdout).
    (b'skipping non-regular file "fifo"',
     _e("", "skipping non-regular file", "fifo", None, "skipping non-regular file"), "fifo"),
    # The remote root missing: a pass with one entry, then with two.
    (b'rsync: [Receiver] change_dir#3 "/w/dst" failed: No such file or directory (2)',
     _e("Receiver", "change_dir#3", "/w/dst", 2, "No such file or directory"), ""),
    (b'rsync: [Receiver] mkdir "/w/dst/." failed: No such file or directory (2)',
     _e("Receiver", "mkdir", "/w/dst/.", 2, "No such file or directory"), ""),
]


@pytest.mark.parametrize(("line", "error", "path"), ERRORS)
def test_parse_error_reads_per_file_errors_and_maps_them_to_folder_paths(line, error, path):
    got = R.parse_error(line)
    assert got == error
    assert R.folder_path(got, source_root=SRC + "/", remote_root=DST) == path


def test_parse_error_ignores_lines_that_name_no_file():
    for line in (b"rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1394) [sender=3.5.0]",
                 b"rsync: [sender] write error: Broken pipe (32)",
                 b"rsync: connection unexpectedly closed (0 bytes received so far) [sender]",
                 b"*** Skipping any contents from this failed directory ***",
                 b"rsync warning: some files vanished before they could be transferred (code 24) at main.c(1394) [sender=3.5.0]",
                 b"WARNING: parent dir is absent in the file list: gone_parent", b""):
        assert R.parse_error(line) is None


def test_folder_path_with_a_base_and_outside_both_roots():
    err = R.parse_error(b"rsync: [generator] delete_file: unlink(old) failed: Permission denied (13)")
    assert err is not None
    assert R.folder_path(err, source_root=SRC, remote_root=DST, base="sub") == "sub/old"
    elsewhere = err._replace(path="/etc/passwd")
    assert R.folder_path(elsewhere, source_root=SRC, remote_root=DST) is None
    at_root = err._replace(path="/x")
    assert R.folder_path(at_root, source_root=SRC, remote_root="/") == "x"
    # A push from "/" to "/backup": the role says which root a path is under.
    mkstemp = R.parse_error(b'rsync: [receiver] mkstemp "/backup/d/.f.AbC123" failed: Permission denied (13)')
    link_stat = R.parse_error(b'rsync: [sender] link_stat "/backup2/x" failed: No such file or directory (2)')
    assert mkstemp is not None and link_stat is not None
    assert R.folder_path(mkstemp, source_root="/", remote_root="/backup") == "d/f"
    assert R.folder_path(link_stat, source_root="/", remote_root="/backup") == "backup2/x"


def test_a_temp_name_maps_back_through_the_listed_paths_when_the_plain_rule_cannot_tell():
    # rsync drops a leading dot: ".hidden" and "hidden" both write ".hidden.XXXXXX".
    err = R.parse_error(b'rsync: [receiver] mkstemp "/w/dst/ro/.hidden.OIQzjb" failed: Permission denied (13)')
    assert err is not None and err.temp
    roots = {"source_root": SRC, "remote_root": DST}
    assert R.folder_path(err, **roots) == "ro/hidden"  # the guess
    assert R.folder_path(err, **roots, listed=["ok/g", "ro/.hidden"]) == "ro/.hidden"
    assert R.folder_path(err._replace(path="/w/dst/sub/ro/.hidden.OIQzjb"), **roots, base="sub",
                         listed=["ro/.hidden"]) == "sub/ro/.hidden"
    # A long name is cut to fit NAME_MAX; one trailing dot goes.
    long = "n" * 300
    assert R.temp_stem("", long) == b"n" * 246 and R.temp_stem("d", "name.") == b"name"
    cut = err._replace(path=f"/w/dst/{'.' + 'n' * 246}.AbC123")
    assert R.folder_path(cut, **roots, listed=["other", long]) == long
    # Not a temp file's operation: a name of that shape is taken as it is.
    real = R.parse_error(b'rsync: [sender] link_stat "/w/src/.a.bcdefg" failed: No such file or directory (2)')
    assert real is not None and not real.temp and R.folder_path(real, **roots) == ".a.bcdefg"


# -- exit codes, stderr diagnoses, versions ---------------------------------------------------------------

def test_classify_every_documented_code_and_never_fails_on_another():
    expected = {0: RsyncExit.OK, 23: RsyncExit.PARTIAL, 24: RsyncExit.PARTIAL, 25: RsyncExit.PARTIAL,
                11: RsyncExit.ABORTED, 20: RsyncExit.ABORTED, 12: RsyncExit.LINK, 10: RsyncExit.LINK,
                30: RsyncExit.LINK, 35: RsyncExit.LINK, 126: RsyncExit.LINK, 127: RsyncExit.LINK,
                255: RsyncExit.LINK, 1: RsyncExit.FATAL_USAGE, 2: RsyncExit.FATAL_USAGE,
                3: RsyncExit.FATAL_USAGE, 4: RsyncExit.FATAL_USAGE}
    for rc, cls in expected.items():
        assert R.classify(rc) is cls, rc
    for rc in R.EXIT_MEANINGS:
        assert R.classify(rc) is not RsyncExit.UNKNOWN, rc
    assert R.classify(99) is RsyncExit.UNKNOWN and R.classify(-9) is RsyncExit.ABORTED
    assert R.describe(23) == "rsync exit 23: partial transfer due to error"
    assert R.describe(99) == "rsync exit 99: a code not known here"
    assert R.describe(-15) == "rsync was killed by signal 15"


# --rsync-path=/nonexistent/rsync (exit 12 or 127: the remote shell's own exit wins only when
# it ended before rsync looked), --rsync-path=/etc/passwd (126), ssh to a port with nothing
# listening (255), a remote shell that prints on start (2).
NO_REMOTE_RSYNC = (b"sh: 1: /nonexistent/rsync: not found\n"
                   b"rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
                   b"rsync error: error in rsync protocol data stream (code 12) at io.c(285) [sender=3.5.0]\n")
NOT_EXECUTABLE = (b"sh: 1: /etc/passwd: Permission denied\n"
                  b"rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
                  b"rsync error: remote command could not be run (code 126) at io.c(285) [sender=3.5.0]\n")
SSH_REFUSED = (b"ssh: connect to host 127.0.0.1 port 1: Connection refused\n"
               b"rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
               b"rsync error: unexplained error (code 255) at io.c(285) [sender=3.5.0]\n")
UNCLEAN_SHELL = (b"protocol version mismatch -- is your shell clean?\n"
                 b"(see the rsync manpage for an explanation)\n"
                 b"rsync error: protocol incompatibility (code 2) at compat.c(625) [sender=3.5.0]\n")
# --fsync to a 3.2.3 remote (exit 12).
OLD_REMOTE = (b"rsync: on remote machine: --fsync: unknown option\n"
              b"rsync error: syntax or usage error (code 1) at main.c(1795) [server=3.2.3]\n"
              b"rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
              b"rsync error: error in rsync protocol data stream (code 12) at io.c(285) [sender=3.5.0]\n")
# A delete pass listing "sub/old" to a 3.4.3 remote (exit 2, nothing deleted).
MODE_0 = (b"invalid file mode 00 for sub/old [Receiver]\n"
          b"rsync error: protocol incompatibility (code 2) at flist.c(874) [Receiver=3.4.3]\n")


def test_stderr_tells_a_missing_remote_rsync_an_old_one_and_the_missing_args_bug():
    assert R.remote_rsync_missing(NO_REMOTE_RSYNC) and R.remote_rsync_missing(NOT_EXECUTABLE)
    assert R.remote_rsync_missing(b"bash: line 1: rsync: command not found\n"
                                  b"rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n")
    assert R.remote_rsync_missing(b"rsync error: remote command not found (code 127) at io.c(285) [sender=3.5.0]\n")
    ssh_own = (b"Can't open user config file /nonexistent: No such file or directory\n"
               b"rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n")
    for other in (SSH_REFUSED, UNCLEAN_SHELL, OLD_REMOTE, MODE_0, ssh_own,
                  b'rsync: [sender] link_stat "/w/src/x" failed: No such file or directory (2)\n'):
        assert not R.remote_rsync_missing(other)
    assert R.rejected_option(OLD_REMOTE) == "--fsync" and R.rejected_option(NO_REMOTE_RSYNC) is None
    assert R.hit_missing_args_bug(MODE_0) and not R.hit_missing_args_bug(UNCLEAN_SHELL)


def test_version_and_whether_one_pass_may_carry_deletions():
    # `rsync --version`'s first line from 3.5.0 (Debian 12's package), and 3.4.3 and 3.2.3
    # built from upstream's tags.
    v350 = R.version(b"rsync  version 3.5.0  protocol version 32\nCopyright (C) 1996-2026 by Andrew Tridgell\n")
    assert v350 == (3, 5, 0) and R.merges_delete_pass(v350)
    assert R.version(b"rsync  version 3.4.3  protocol version 32\n") == (3, 4, 3)
    assert not R.merges_delete_pass((3, 4, 3)) and R.merges_delete_pass((3, 4, 4))
    assert not R.merges_delete_pass(R.version(b"rsync  version 3.2.3  protocol version 31\n"))
    assert R.version(b"rsync  version v3.4  protocol version 32") == (3, 4, 0)
    with pytest.raises(ValueError):
        R.version(b"sh: 1: rsync: not found")


# -- end to end, with the local rsync -------------------------------------------------------------------

@pytest.fixture
def fake_rsh(tmp_path: Path) -> str:
    d = tmp_path / "rsh dir's"  # rsync must read the -e value as shlex.join wrote it
    d.mkdir()
    path = d / "fake rsh"
    path.write_text(FAKE_RSH)
    path.chmod(0o755)
    return str(path)


def run(mode: Mode, src: Path | str, dst: Path | str, ssh: str, paths: list[str] | None = None,
        **kw: object) -> tuple[int, list[OutLine], list[bytes]]:
    cmd = R.argv(mode=mode, source_root=str(src), host="h", remote_root=str(dst), ssh=[ssh], **kw)  # type: ignore[arg-type]
    p = subprocess.run(cmd, input=R.files_from(paths) if paths is not None else b"", capture_output=True, timeout=30)
    lines = [R.parse_line(raw, base=str(kw.get("base", ""))) for raw in p.stdout.splitlines()]
    assert all(lines), p.stdout  # nothing else on stdout in these runs
    return p.returncode, [x for x in lines if x is not None], p.stderr.splitlines()


def tree(root: Path) -> dict[str, bytes | str | None]:
    """path: contents for a file, "-> target" for a symlink, None for a directory."""
    out: dict[str, bytes | str | None] = {}
    for dirpath, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(full, os.fsencode(root)))
            st = os.lstat(full)
            out[rel] = (None if stat.S_ISDIR(st.st_mode) else "-> " + os.fsdecode(os.readlink(full))
                        if stat.S_ISLNK(st.st_mode) else Path(os.fsdecode(full)).read_bytes())
    return out


ODD_NAMES = ["new\nline", os.fsdecode(b"lat\xe9-not-utf8"), "-dash", "--delete", "with space", "quo\"te 'x'", "tab\there"]


@needs_rsync
@pytest.mark.timeout(30)
def test_a_transfer_pass_sends_odd_names_and_makes_a_listed_directory_without_its_contents(tmp_path, fake_rsh):
    src, dst = tmp_path / "src", tmp_path / "dst"
    dst.mkdir()
    for i, name in enumerate(ODD_NAMES):
        p = src / "d" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * i)
    (src / "link").symlink_to("d/-dash")
    (src / "emptydir" / "child").mkdir(parents=True)
    (src / "emptydir" / "child" / "not listed").write_bytes(b"no")
    listed = [f"d/{n}" for n in ODD_NAMES] + ["link", "emptydir"]

    rc, lines, err = run(Mode.TRANSFER, src, dst, fake_rsh, listed)

    assert (rc, err) == (0, [])
    assert R.classify(rc) is RsyncExit.OK
    assert {x.path: (x.kind, x.action) for x in lines} == {
        **{f"d/{n}": (Kind.FILE, Action.SENT) for n in ODD_NAMES},
        "d": (Kind.DIR, Action.CREATED), "link": (Kind.SYMLINK, Action.CREATED),
        "emptydir": (Kind.DIR, Action.CREATED)}
    got = tree(dst)
    assert got == {"d": None, **{f"d/{n}": b"x" * i for i, n in enumerate(ODD_NAMES)},
                   "link": "-> d/-dash", "emptydir": None}

    # Again: nothing to do, nothing said.
    assert run(Mode.TRANSFER, src, dst, fake_rsh, listed) == (0, [], [])


@needs_rsync
@pytest.mark.timeout(30)
def test_a_delete_pass_removes_a_file_and_a_directory_tree_and_keeps_the_rest(tmp_path, fake_rsh):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "kept").mkdir(parents=True)
    (src / "kept" / "f").write_bytes(b"k")
    for p in ("kept/f", "kept/gone", "tree/a/b/c", "tree/d", "old file"):
        (dst / p).parent.mkdir(parents=True, exist_ok=True)
        (dst / p).write_bytes(b"o")
    missing = ["kept/gone", "tree/a/b/c", "tree/d", "old file", "never there"]

    listed = R.deletion_list(missing, lambda p: os.path.lexists(src / p))
    assert listed == ["kept/gone", "never there", "old file", "tree"]
    # The local rsync is the receiver here: as the daemon would, one pass per directory if it
    # has the --delete-missing-args bug.
    assert RSYNC is not None
    receiver = R.version(subprocess.run([RSYNC, "--version"], capture_output=True, check=True).stdout)
    passes = {"": listed} if R.merges_delete_pass(receiver) else R.by_directory(listed)
    lines = []
    for base, names in passes.items():
        rc, got, err = run(Mode.DELETE, src, dst, fake_rsh, names, base=base)
        assert (rc, err) == (0, [])
        lines += got

    assert {(x.path, x.kind) for x in lines if x.action is Action.DELETED} == {
        ("kept/gone", Kind.UNKNOWN), ("old file", Kind.UNKNOWN), ("tree", Kind.DIR), ("tree/a", Kind.DIR),
        ("tree/a/b", Kind.DIR), ("tree/a/b/c", Kind.UNKNOWN), ("tree/d", Kind.UNKNOWN)}
    assert tree(dst) == {"kept": None, "kept/f": b"o"}  # the pass touched nothing else

    # One pass per directory (the way around the 3.4.3 receiver's bug): paths under the base.
    (dst / "kept" / "old").write_bytes(b"o")
    rc, lines, err = run(Mode.DELETE, src, dst, fake_rsh, R.by_directory(["kept/old"])["kept"], base="kept")
    assert (rc, err, [(x.path, x.action) for x in lines]) == (0, [], [("kept/old", Action.DELETED)])


@needs_rsync
@pytest.mark.timeout(30)
def test_a_compare_lists_exactly_what_differs_and_changes_nothing(tmp_path, fake_rsh):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for root, files in ((src, {"same": b"s", "sub/same": b"s", "sub/changed": b"new!", "sub/new": b"n", "newdir/f": b"f"}),
                        (dst, {"same": b"s", "sub/same": b"s", "sub/changed": b"old", "sub/extra": b"e"})):
        for p, data in files.items():
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            (root / p).write_bytes(data)
    (dst / "gone" / "deep").mkdir(parents=True)
    # Ours in the target: never listed. rsync's leftover temp file is, for deletion.
    (dst / tempnames.LOCK_NAME).write_bytes(b"lock")
    (dst / "sub" / R.PARTIAL_DIR).mkdir()
    (dst / "sub" / R.PARTIAL_DIR / "changed").write_bytes(b"half")
    (dst / ".same.AbC123").write_bytes(b"t")
    for p in ("same", "sub/same"):  # same size and mtime: the quick check passes
        os.utime(dst / p, ns=(0, (src / p).stat().st_mtime_ns))
    os.chmod(src / "sub" / "same", 0o600)
    before = tree(dst)

    rc, lines, err = run(Mode.COMPARE, src, dst, fake_rsh)

    assert (rc, err) == (0, [])
    assert {x.path: x.action for x in lines} == {
        "sub/changed": Action.SENT, "sub/new": Action.SENT, "sub/same": Action.ATTRS,
        "newdir": Action.CREATED, "newdir/f": Action.SENT, "sub/extra": Action.DELETED,
        "gone": Action.DELETED, "gone/deep": Action.DELETED, ".same.AbC123": Action.DELETED}
    assert tree(dst) == before
    # Inside a subtree: the same paths, under it.
    rc, lines, _ = run(Mode.COMPARE, src, dst, fake_rsh, base="sub")
    assert rc == 0 and {x.path for x in lines} == {"sub/changed", "sub/new", "sub/same", "sub/extra"}


@needs_rsync
@pytest.mark.skipif(os.geteuid() != 0, reason="runs the remote rsync as nobody: needs root")
@pytest.mark.timeout(30)
def test_an_unwritable_target_directory_fails_its_files_only_with_errno_13(tmp_path, fake_rsh):
    src = tmp_path / "src"
    for p in ("ok/f", "ro/f", "ro/.hidden"):
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        (src / p).write_bytes(b"data")
    # nobody must reach the target: not under pytest's 0700 directory.
    dst = Path(tempfile.mkdtemp(prefix="fm-rsync-"))
    try:
        (dst / "ok").mkdir()
        (dst / "ro").mkdir()
        for d in (dst, dst / "ok"):
            os.chown(d, 65534, 65534)
        # "ro" stays root's, mode 755, with the source's mtime: nobody has nothing to change there.
        os.utime(dst / "ro", ns=(0, (src / "ro").stat().st_mtime_ns))
        listed = ["ok/f", "ro/f", "ro/.hidden"]

        rc, lines, err = run(Mode.TRANSFER, src, dst, fake_rsh, listed, rsync_path=[*NOBODY, "rsync"])

        assert rc == 23 and R.classify(rc) is RsyncExit.PARTIAL
        # The sender printed every file, the failed ones too: lines are no proof.
        assert {x.path for x in lines} == set(listed)
        errors = [e for e in map(R.parse_error, err) if e is not None]
        got = {R.folder_path(e, source_root=str(src), remote_root=str(dst), listed=listed): (e.op, e.errno)
               for e in errors}
        assert got == {"ro/f": ("mkstemp", errno.EACCES), "ro/.hidden": ("mkstemp", errno.EACCES)}
        assert (dst / "ok" / "f").read_bytes() == b"data" and os.listdir(dst / "ro") == []
    finally:
        shutil.rmtree(dst)


@needs_rsync
@pytest.mark.timeout(30)
def test_no_remote_rsync_and_a_missing_remote_root_are_told_apart(tmp_path, fake_rsh):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    rc, _, err = run(Mode.TRANSFER, src, dst, fake_rsh, ["f"], rsync_path=["/nonexistent/rsync"])
    assert rc in (12, 127) and R.classify(rc) is RsyncExit.LINK
    assert R.remote_rsync_missing(b"\n".join(err))

    # rsync would make a missing destination directory; `/.` stops it.
    rc, _, err = run(Mode.TRANSFER, src, dst, fake_rsh, ["f"])
    assert rc in (3, 11) and not dst.exists()
    errors = [e for e in map(R.parse_error, err) if e is not None]
    assert [R.folder_path(e, source_root=str(src), remote_root=str(dst)) for e in errors] == [""]
    assert not R.remote_rsync_missing(b"\n".join(err))


def test_a_failed_run_is_explained_by_its_code_and_rsyncs_first_words():
    assert R.explain(12, NO_REMOTE_RSYNC) == "rsync is not installed on the remote host (or ssh.rsync_path is wrong)"
    assert R.explain(12, OLD_REMOTE) == ("rsync exit 12: error in rsync protocol data stream: "
                                          "rsync: on remote machine: --fsync: unknown option")
    only = b"rsync error: some files could not be transferred (code 23) at main.c(1338) [sender=3.5.0]\n"
    assert R.explain(23, only) == "rsync exit 23: partial transfer due to error: " + only.decode().strip()
    assert R.explain(-9, b"") == "rsync was killed by signal 9"


def test_a_remote_that_cannot_run_the_pass_is_no_broken_link():
    assert R.classify(12) is R.RsyncExit.LINK
    assert R.classify_run(12, NO_REMOTE_RSYNC) is R.RsyncExit.FATAL_USAGE
    assert R.classify_run(12, OLD_REMOTE) is R.RsyncExit.FATAL_USAGE  # --fsync (durable: true) refused
    broken = b"rsync: connection unexpectedly closed (4096 bytes received so far) [sender]\n"
    assert R.classify_run(12, broken) is R.RsyncExit.LINK
    assert R.classify_run(23, OLD_REMOTE) is R.RsyncExit.PARTIAL
