"""Start-up checks that tell the operator what to do: folder access, inotify limits, PrivateTmp.

Each check returns what it found; the warn_* functions at the end say it in the log, with
what to do about it.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from typing import Any

from foldermirror import faults
from foldermirror.config import DEFAULT_RESCAN, Config, FolderConfig, SshConfig, under_private_tmp
from foldermirror.pipeline.copier import describe
from foldermirror.pipeline.fidelity import ACL_ACCESS, UNSUPPORTED, may_chown
from foldermirror.pipeline.target_health import (
    LocalTargetHealth,
    RemoteTargetHealth,
    TargetHealth,
    missing_from,
    probe_write,
    why_at,
)
from foldermirror.tempnames import temp_name

WATCHES_SYSCTL = "fs.inotify.max_user_watches"
WATCHES_FILE = "/proc/sys/fs/inotify/max_user_watches"


def user_label() -> str:
    """This process's user as verdicts name it: `alice (uid 1000)`."""
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def target_health(f: FolderConfig, instance: str, ssh: SshConfig | None = None) -> TargetHealth:
    """The health half of the folder's Target (see pipeline/target_health.py); `ssh` names the
    known_hosts file a remote target's host key is looked up in."""
    if f.remote is not None:
        known = ssh.for_host(f.remote.link.host).known_hosts if ssh is not None else None
        return RemoteTargetHealth(str(f.remote), str(known) if known else None, f.remote.link.known_hosts_name)
    return LocalTargetHealth(str(f.target), instance)


@dataclass(frozen=True)
class FolderAccess:
    """What the access probes found for one folder."""

    problem: str | None             # one sentence naming the path and the cause; None: it can be served
    proved: tuple[str, ...] = ()    # what was shown, for `check`'s verdict
    config_error: bool = False      # the config must change (exit 78), e.g. a host key not in known_hosts


def folder_problem(f: FolderConfig, instance: str, create: bool = True, ssh: SshConfig | None = None) -> str | None:
    """One sentence naming the path and the cause, or None when the folder can be served (see probe_folder)."""
    return probe_folder(f, instance, create, ssh).problem


def probe_folder(f: FolderConfig, instance: str, create: bool = True, ssh: SshConfig | None = None) -> FolderAccess:
    """Prove, for this process's user, the source readable and the target writable.

    create=True (run, sync) first creates what the config asks for: the target, and the source
    with `create: true`. create=False (check) creates nothing: where a folder is missing, the
    nearest existing parent it would be created in must be writable instead. Either way a
    probe file is the only thing written, and it is removed at once.

    A missing source is not a problem: the daemon waits for it to appear. With create=False a
    source that exists but cannot be reached or is not a directory is one (run would start
    and wait for it, logging folder_unwatched).
    """
    user = user_label()
    proved: list[str] = []
    source = str(f.source)
    if f.create:
        if create:
            try:
                os.makedirs(source, exist_ok=True)
            except OSError as exc:
                return FolderAccess(f"cannot create source {source}: {describe(exc)}")
        else:
            try:
                parent = missing_from(source)
            except OSError as exc:
                return FolderAccess(f"cannot create source {source}: {why_at(exc, source)}")
            if parent is not None:
                problem = probe_write(parent, instance, f"cannot create source {source}: {parent}", user)
                if problem is not None:
                    return FolderAccess(problem)
                proved.append(f"source {source} does not exist yet: run creates it in {parent}, writable by {user}")
    try:
        is_dir = stat.S_ISDIR(os.stat(source).st_mode)
    except FileNotFoundError:
        if not proved:
            proved.append(f"source {source} does not exist yet: it is mirrored once it appears")
    except OSError as exc:
        if not create:
            return FolderAccess(f"source {source} is not readable by {user}: {describe(exc)}")
    else:
        if is_dir:
            try:
                with os.scandir(source) as entries:
                    next(entries, None)
            except OSError as exc:
                return FolderAccess(f"source {source} is not readable by {user}: {describe(exc)}")
            if not os.access(source, os.R_OK | os.X_OK):
                return FolderAccess(f"source {source} is not readable by {user}: permission denied")
            proved.append("source readable")
        elif not create:
            return FolderAccess(f"source {source} is not a directory")
    probe = target_health(f, instance, ssh).probe(create=create, user=user)
    if probe.problem is not None:
        return FolderAccess(probe.problem, config_error=probe.config_error)
    proved.append(probe.proved)
    versions = versions_access(f, create)
    if versions is not None and versions.problem is not None:
        return versions
    if versions is not None:
        proved += versions.proved
    return FolderAccess(None, tuple(proved))


def versions_access(f: FolderConfig, create: bool = True) -> FolderAccess | None:
    """The versions area is on the target's file system (link(2) and rename cannot cross one);
    with `create`, it is made when missing. None: versions are off, or the target is remote (its
    host checks it in rsync's --backup-dir)."""
    area = f.versions_area
    if area is None or f.remote is not None:
        return None
    target = str(f.target)
    if create:
        try:
            os.makedirs(area, 0o700, exist_ok=True)
        except OSError as exc:
            return FolderAccess(f"cannot create the versions area {area}: {describe(exc)}")
    try:
        where_area = area if create else (missing_from(area) or area)
        where_target = target if create else (missing_from(target) or target)
        dev_area, dev_target = os.stat(where_area).st_dev, os.stat(where_target).st_dev
    except OSError as exc:
        return FolderAccess(f"the versions area {area}: {describe(exc)}")
    if dev_area != dev_target:
        return FolderAccess(
            f"folder {f.name}: versions.path: the versions area {area} is not on the file system of the target "
            f"{target} (device {os.major(dev_area)}:{os.minor(dev_area)}, not {os.major(dev_target)}:"
            f"{os.minor(dev_target)}): a version is a hard link of the mirror's file, so set versions.path to a "
            "folder on the target's file system", config_error=True)
    if not os.access(where_area, os.W_OK | os.X_OK):
        return FolderAccess(f"the versions area {where_area} is not writable by {user_label()}")
    return FolderAccess(None, (f"versions kept in {area}, on the target's file system",))


def prove_remote(f: FolderConfig, ssh: SshConfig) -> FolderAccess:
    """`check` on a remote target: log in (a connection of its own) and prove the remote side,
    creating nothing. A host that does not answer now is no verdict on the config: the
    daemon keeps trying; a host key that does not match is one."""
    from foldermirror.remote import probe
    from foldermirror.remote.links import remote_spec

    remote = f.remote
    assert remote is not None
    spec = remote_spec(f, ssh, sockets=())
    proof = probe.run(list(spec.ssh[0]), remote.link.host, spec.rsync_path, remote.path, make=False,
                      url=str(remote), timeout=ssh.for_host(remote.link.host).connect_timeout)
    if proof.link_error is None:
        return FolderAccess(proof.problem, (proof.proved,) if proof.proved else ())
    known = ssh.for_host(remote.link.host).known_hosts
    if "host key" in proof.link_error.lower() or "identification has changed" in proof.link_error.lower():
        return FolderAccess(f"target {remote}: the host key of {remote.link.known_hosts_name} does not match the "
                            f"one in {known}: {proof.link_error}; if the host was rebuilt, check its new "
                            f"fingerprint, then replace its line (ssh-keygen -R, ssh-keyscan)", config_error=True)
    if "permission denied" in proof.link_error.lower():
        return FolderAccess(f"target {remote}: the key is refused: {proof.link_error}; add the public key to the "
                            f"remote user's ~/.ssh/authorized_keys")
    return FolderAccess(None, (f"host {remote.link} cannot be reached now ({proof.link_error}): the remote side "
                               "is proved once the daemon connects",))


# -- inotify watches -------------------------------------------------------------------
def max_user_watches() -> int | None:
    """The kernel's per-user inotify watch limit; tests may override it through faults."""
    override = faults.value("max_user_watches")
    if override is not None:
        return int(override)
    try:
        with open(WATCHES_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def count_directories(root: str) -> int:
    """Directories under `root`, itself included: one inotify watch each. Symlinks are not followed."""
    count = 0
    stack = [root]
    while stack:
        path = stack.pop()
        count += 1
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                    except OSError:
                        pass
        except OSError:
            pass  # unreadable or gone: reported by the catch-up walk
    return count


@dataclass(frozen=True)
class WatchShortage:
    limit: int
    needed: int

    @property
    def suggested(self) -> int:
        """The need plus a quarter for growth, rounded up to a thousand."""
        return -(-(self.needed * 5 // 4) // 1000) * 1000


def watch_shortage(folders: tuple[FolderConfig, ...], limit: int | None) -> WatchShortage | None:
    """At start-up and reload: the folders' directories counted now."""
    if limit is None:
        return None
    return watch_shortage_of(sum(count_directories(str(f.source)) for f in folders if os.path.isdir(f.source)), limit)


def watch_shortage_of(needed: int, limit: int | None) -> WatchShortage | None:
    """The one rule for "too few inotify watches" (start-up warning and `status` alike)."""
    return WatchShortage(limit, needed) if limit is not None and needed > limit else None


# -- PrivateTmp ------------------------------------------------------------------------
def private_tmp_paths(config: Config) -> list[tuple[str, str]]:
    """(key, path) for every configured path that systemd's PrivateTmp= would hide."""
    if not os.environ.get("INVOCATION_ID"):
        return []
    found = [("--config", str(config.path))]
    for i, f in enumerate(config.folders):
        found += [(f"folders[{i}].source", str(f.source)), (f"folders[{i}].target", str(f.target))]
    return [(key, path) for key, path in found if under_private_tmp(path)]


# -- what start-up and reload say about them -----------------------------------------------
def warn_private_tmp(log: Any, config: Config) -> None:
    for key, path in private_tmp_paths(config):
        log.warning("private_tmp_path", key=key, path=path,
                    error="the unit's PrivateTmp=yes gives the service its own empty /tmp and /var/tmp: "
                          "this path is not the one you see, and what is written there vanishes on stop",
                    fix="move it out of /tmp and /var/tmp")


def warn_watch_limit(log: Any, folders: tuple[FolderConfig, ...], rescan_interval: float) -> float:
    """Warn when the folders hold more directories than inotify may watch: the ones past the
    limit get no events, and the kernel says so to nobody. Returns the rescan interval to
    use: the configured one, or DEFAULT_RESCAN when it is off (the unwatched part needs some
    safety net)."""
    shortage = watch_shortage(folders, max_user_watches())
    if shortage is None:
        return rescan_interval
    every = rescan_interval or DEFAULT_RESCAN
    log.warning(
        "inotify_limit_low", sysctl=WATCHES_SYSCTL, limit=shortage.limit, needed=shortage.needed,
        rescan_interval_s=every,
        error=f"the watched folders hold {shortage.needed:,} directories but {WATCHES_SYSCTL} lets a user watch "
              f"{shortage.limit:,}: directories past the limit get no events, and their changes are found "
              f"only by the rescan every {every:g}s",
        fix=f"echo '{WATCHES_SYSCTL} = {shortage.suggested}' > /etc/sysctl.d/90-foldermirror.conf && "
            f"sysctl --system, then restart the service")
    return every


def unkept_properties(target: str, preserve: tuple[str, ...], instance: str) -> tuple[list[str], str]:
    """Which of `preserve`'s xattrs and acls the target's file system refuses (ENOTSUP), and
    the error it gave; ([], "") when it keeps them or cannot be probed (the copies then say why).

    One temp file is made in the target, given a `user.` attribute and asked for its access
    ACL (ENODATA: supported, there is none), and removed.
    """
    wanted = [p for p in ("xattrs", "acls") if p in preserve]
    if not wanted:
        return [], ""
    probe = os.path.join(target, temp_name(instance))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return [], ""
    refused: list[str] = []
    error = ""
    try:
        for name in wanted:
            try:
                if name == "xattrs":
                    os.setxattr(fd, "user.foldermirror-probe", b"1")
                else:
                    os.getxattr(fd, ACL_ACCESS)
            except OSError as exc:
                if exc.errno in UNSUPPORTED:
                    refused.append(name)
                    error = describe(exc)
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass
    return refused, error


def note_unkept(log: Any, f: FolderConfig, instance: str) -> None:
    """At a folder's start: say once what its `preserve:` asks for and this mirror cannot keep.

    A target file system without extended attributes or ACLs is a warning (the files are
    mirrored without them). Owners that this process may not set are an info line: that is
    the systemd default (the service user has no CAP_CHOWN), a choice rather than a fault,
    and nothing is said per file.
    """
    if f.remote is not None:
        return  # a remote target says what it cannot keep at link-up (remote/links.py)
    refused, error = unkept_properties(str(f.target), f.preserve, instance)
    if refused:
        log.warning("preserve_unsupported", folder=f.name, target=str(f.target), unsupported=refused,
                    error=f"the file system of {f.target} refuses extended attributes: {error}; "
                          f"files are mirrored without their {' and '.join(refused)}",
                    fix=f"mirror onto a file system that keeps them (ext4, xfs, btrfs, tmpfs), or remove "
                        f"{', '.join(refused)} from folder {f.name}'s preserve: to keep this quiet")
    if "owner" in f.preserve and not may_chown():
        log.info("owner_not_kept", folder=f.name, target=str(f.target), user=user_label(),
                 reason="only root or a process with CAP_CHOWN can give files another owner: the mirror's "
                        "files belong to the user running the daemon",
                 fix="to keep owners, run the daemon as root (or with CAP_CHOWN); otherwise nothing to do, "
                     "or remove owner from preserve: to keep this quiet")
