"""A remote target as the config names it: ssh://[user@]host[:port]/absolute/path.

Only this form is remote. rsync's `host:path` is not accepted: a local path may contain a
colon, and a target must never be sent to another machine by accident. Standard library
only (workers use it).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from typing import NamedTuple

SCHEME = "ssh://"
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HOST = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_OTHER_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class Link(NamedTuple):
    """What one ssh master connects to; folders that share it share the connection."""

    user: str | None
    host: str
    port: int | None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{_bracketed(self.host)}{port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: `host`, or `[host]:port` off port 22."""
        return f"[{self.host}]:{self.port}" if self.port and self.port != 22 else self.host


class RemoteUrl(NamedTuple):
    link: Link
    path: str  # absolute and normalised, never "/"

    def __str__(self) -> str:
        return f"{SCHEME}{self.link}{self.path}"

    @property
    def rsync_dest(self) -> str:
        """The destination rsync is given: user@host:/path/ (the trailing slash: into it)."""
        user = f"{self.link.user}@" if self.link.user else ""
        return f"{user}{_bracketed(self.link.host)}:{self.path.rstrip('/')}/"

    def inside(self, other: RemoteUrl) -> bool:
        """On the same host and at or below `other`'s path."""
        return (self.link.host == other.link.host and self.link.port == other.link.port
                and (self.path == other.path or self.path.startswith(other.path + "/")))


def is_remote(text: str) -> bool:
    """Whether `text` names a remote target (ssh://, or another scheme to refuse)."""
    return bool(_OTHER_SCHEME.match(text))


def parse(text: str) -> RemoteUrl:
    """Parse ssh://[user@]host[:port]/absolute/path; ValueError says what is wrong."""
    if not text.startswith(SCHEME):
        scheme = text.split("://", 1)[0]
        raise ValueError(f"{scheme}:// targets are not supported: a remote target is ssh://[user@]host[:port]/path")
    rest = text[len(SCHEME):]
    slash = rest.find("/")
    if slash < 0:
        raise ValueError(f"{text}: give the absolute path on the host, e.g. {text.rstrip('/')}/srv/mirror")
    authority, path = rest[:slash], rest[slash:]
    user, at, hostport = authority.rpartition("@")
    if at and not _USER.match(user):
        raise ValueError(f"{text}: {user!r} is not a user name ssh accepts")
    host, port = _host_port(hostport, text)
    if "\0" in path or "\n" in path:
        raise ValueError(f"{text}: the path holds a control character")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == "/":
        raise ValueError(f"{text}: the root of the remote file system cannot be a target; name a folder")
    return RemoteUrl(Link(user or None, host, port), norm)


def _host_port(hostport: str, text: str) -> tuple[str, int | None]:
    port_text = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"{text}: an IPv6 address needs its closing ]")
        host, after = hostport[1:end], hostport[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text}: {host!r} is not an IPv6 address") from None
        if after:
            if not after.startswith(":"):
                raise ValueError(f"{text}: expected :port after the address, got {after!r}")
            port_text = after[1:]
    else:
        host, colon, port_text_ = hostport.partition(":")
        port_text = port_text_ if colon else None
        if not host:
            raise ValueError(f"{text}: the host is missing")
        # A host starting with '-' would be read by ssh as an option.
        if not _HOST.match(host):
            raise ValueError(f"{text}: {host!r} is not a host name or address")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text}: the port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
