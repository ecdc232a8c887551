"""What a mirror keeps beside bytes, mode and mtime: xattrs, POSIX ACLs, holes, owners.

Standard library only (workers use it). Each property is a folder's `preserve:` name; hard
links are not here (they are a matter of which inode a path is, not of one file's metadata).

- Extended attributes: `user.*` always; `trusted.*` and `security.*` (file capabilities,
  SELinux labels) only with euid 0, where the kernel lists and sets them. Linux refuses
  `user.*` on a symlink (EPERM), so a symlink keeps only the other namespaces.
- POSIX ACLs are the `system.posix_acl_access` / `system.posix_acl_default` attributes,
  copied as raw values (the kernel's own format; no libacl). A name in a kept namespace that
  the source lacks is removed from the mirror, so a temp file that inherited its target
  directory's default ACL ends with the source's ACL (or none) and, after fchmod, its mode.
- Sparse files: a file with fewer allocated blocks than its size is copied segment by
  segment (SEEK_DATA / SEEK_HOLE) into a temp file truncated to its size; the others take
  the plain in-kernel copy.
- Owners: chown needs CAP_CHOWN in the effective set (root has it, the systemd unit's user not).
"""

from __future__ import annotations

import errno
import functools
import os
from typing import NamedTuple

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
_ACLS = (ACL_ACCESS, ACL_DEFAULT)
_PRIVILEGED = ("trusted.", "security.")
# A file system (or a mount) without them: the properties are dropped there, never the file.
UNSUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
CAP_CHOWN = 0

# name → value, of the attributes a folder keeps
Attrs = dict[str, bytes]


@functools.cache
def may_chown() -> bool:
    """Whether this process may give a file any owner: CAP_CHOWN in its effective set (which
    root has unless a bounding set took it away); euid 0 where /proc cannot say."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_CHOWN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


class Keep(NamedTuple):
    """What one folder's mirror keeps, as far as this process can keep it."""

    xattrs: bool = False
    acls: bool = False
    sparse: bool = False
    owner: bool = False
    privileged: bool = False   # trusted.* and security.* too (euid 0)

    @property
    def attrs(self) -> bool:
        return self.xattrs or self.acls

    def wanted(self, name: str, symlink: bool = False) -> bool:
        """Whether the attribute `name` is one this folder mirrors (on a symlink: `symlink`)."""
        if name in _ACLS:
            return self.acls and not symlink
        if name.startswith("user."):
            return self.xattrs and not symlink
        if name.startswith(_PRIVILEGED):
            return self.xattrs and self.privileged
        return False


NOTHING = Keep()


def on_target(root_fd: int, keep: Keep) -> Keep:
    """`keep` without what the target's file system refuses: asking its root for an attribute
    it lacks says ENODATA where the file system has them and ENOTSUP where it has none (vfat,
    ramfs, a tmpfs or NFS mount without them). Read-only; one or two system calls."""
    if not keep.attrs:
        return keep
    for prop, probe in (("xattrs", "user.foldermirror-probe"), ("acls", ACL_ACCESS)):
        if getattr(keep, prop):
            try:
                os.getxattr(root_fd, probe)
            except OSError as exc:
                if exc.errno in UNSUPPORTED:
                    keep = keep._replace(**{prop: False})
    return keep


def keep_for(preserve: tuple[str, ...] | list[str]) -> Keep:
    """A folder's `preserve:` names as this process can honour them."""
    return Keep(xattrs="xattrs" in preserve, acls="acls" in preserve, sparse="sparse" in preserve,
                owner="owner" in preserve and may_chown(), privileged=os.geteuid() == 0)


# -- reading ---------------------------------------------------------------------------------
def read_attrs(where: int | str, keep: Keep, symlink: bool = False) -> Attrs:
    """The kept attributes of an fd, or of a path (never followed). {} where the file system
    has none (ENOTSUP), or nothing is kept."""
    if not keep.attrs:
        return {}
    follow = isinstance(where, int)
    try:
        names = os.listxattr(where, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in UNSUPPORTED:
            return {}
        raise
    out: Attrs = {}
    for name in names:
        if keep.wanted(name, symlink):
            try:
                out[name] = os.getxattr(where, name, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, *UNSUPPORTED):  # removed meanwhile
                    raise
    return out


def at(dfd: int, name: str) -> str:
    """A path naming `name` in directory fd `dfd`, for the calls that take no dir_fd
    (the xattr calls). Used with follow_symlinks=False, so a symlink there is not followed."""
    return f"/proc/self/fd/{dfd}/{name}"


# -- writing ---------------------------------------------------------------------------------
def apply_attrs(where: int | str, want: Attrs, keep: Keep, symlink: bool = False,
                have: Attrs | None = None) -> bool:
    """Make the kept attributes of an fd (or an unfollowed path) `want`: set what differs,
    remove kept names the source lacks (an inherited default ACL among them).

    Returns False when the file system refuses extended attributes (ENOTSUP): the caller
    publishes the file without them. `have`: the attributes read just before, if known.
    """
    if not keep.attrs:
        return True
    follow = isinstance(where, int)
    try:
        current = have if have is not None else read_attrs(where, keep, symlink)
        for name, value in want.items():
            if current.get(name) != value:
                try:
                    os.setxattr(where, name, value, follow_symlinks=follow)
                except OSError as exc:
                    # security.* a policy manages (an SELinux label) or that needs more than
                    # euid 0 (security.capability without CAP_SETFCAP) is left as it is.
                    if exc.errno in UNSUPPORTED or not (name.startswith("security.") and exc.errno in
                                                        (errno.EPERM, errno.EACCES)):
                        raise
        for name in current:
            if name not in want:
                try:
                    os.removexattr(where, name, follow_symlinks=follow)
                except OSError as exc:
                    if exc.errno != errno.ENODATA and not name.startswith("security."):
                        raise
    except OSError as exc:
        if exc.errno in UNSUPPORTED:
            return False
        raise
    return True


def same_owner(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_uid == b.st_uid and a.st_gid == b.st_gid


# -- sparse files ----------------------------------------------------------------------------
def is_sparse(st: os.stat_result) -> bool:
    """Fewer bytes allocated than its size: it has holes (the only check a dense file pays)."""
    return st.st_blocks * 512 < st.st_size


def copy_sparse(sfd: int, tfd: int, size: int) -> int:
    """Copy the first `size` bytes of sfd into tfd keeping holes as holes.

    tfd is truncated to `size` (a hole as long as the file), then only the data segments the
    source reports (SEEK_DATA / SEEK_HOLE) are copied, at their offsets, in the kernel.
    Returns the bytes covered: `size`, or less when the source shrank during the copy (the
    caller's fstat afterwards then sees a change, as with a dense copy).
    """
    os.ftruncate(tfd, size)
    pos = 0
    while pos < size:
        try:
            start = os.lseek(sfd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                return size
            if exc.errno in (errno.EINVAL, *UNSUPPORTED) and pos == 0:  # no SEEK_DATA here: all data
                return _copy_range(sfd, tfd, 0, size)
            raise
        if start >= size:
            return size
        end = min(os.lseek(sfd, start, os.SEEK_HOLE), size)
        done = _copy_range(sfd, tfd, start, end - start)
        if done < end - start:
            return start + done  # shrank meanwhile
        pos = end
    return size


def _copy_range(sfd: int, tfd: int, offset: int, length: int) -> int:
    total = 0
    while total < length:
        off = offset + total
        try:
            n = os.copy_file_range(sfd, tfd, length - total, off, off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            buf = os.pread(sfd, min(length - total, 1 << 20), off)
            n = os.pwrite(tfd, buf, off) if buf else 0
        if n == 0:
            return total
        total += n
    return total
