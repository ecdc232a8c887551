"""The control socket: a UNIX stream socket that answers `status` and `rescan`, nothing else.

One request per connection: one JSON object on one line, e.g. {"request": "status"} or
{"request": "rescan", "folder": "photos"}; one JSON line back, {"ok": true, …} or
{"ok": false, "error": …}. No request takes a path, so the socket cannot be used to read
files. Requests are size-limited and every connection has a deadline, so a stuck or
hostile client costs the daemon at most CLIENT_TIMEOUT seconds of this one thread.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foldermirror.config import Config
from foldermirror.errors import FoldermirrorError, NotRunningError

SOCKET_NAME = "control.sock"
RUN_DIR = Path("/run/foldermirror")
MAX_REQUEST = 4096
MAX_REPLY = 16 * 1024 * 1024
CLIENT_TIMEOUT = 2.0
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(Exception):
    """A request the daemon refuses; str() is the reply's error text."""


def socket_paths(config: Config) -> list[Path]:
    """Where this config's daemon may listen, in the order it tries them.

    An explicit `control_socket:` is the only place. Under systemd, RuntimeDirectory= gives
    the daemon a folder of its own. Otherwise the name carries a hash of the config's path,
    so daemons run by hand with different configs never contend for one path.
    """
    if config.control_socket is not None:
        return [config.control_socket]
    out: list[Path] = []
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        out.append(Path(runtime) / SOCKET_NAME)
    name = f"control-{hashlib.sha256(os.fsencode(os.path.realpath(config.path))).hexdigest()[:12]}.sock"
    out.extend(folder / name for folder in _fallback_folders())
    return list(dict.fromkeys(out))


def lookup_paths(config: Config) -> list[Path]:
    """Where `status` looks: the daemon's own candidates, then the sockets systemd units make
    (RuntimeDirectory=foldermirror or foldermirror/INSTANCE), which `status` run from a shell
    cannot know from its environment. Each answer is checked against the config."""
    if config.control_socket is not None:
        return [config.control_socket]
    try:
        units = [RUN_DIR / SOCKET_NAME, *sorted(RUN_DIR.glob(f"*/{SOCKET_NAME}"))]
    except OSError:
        units = [RUN_DIR / SOCKET_NAME]
    return list(dict.fromkeys([*socket_paths(config), *units]))


def _fallback_folders() -> list[Path]:
    out = [RUN_DIR]
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        out.append(Path(xdg) / "foldermirror")
    out.append(Path(tempfile.gettempdir()) / f"foldermirror-{os.geteuid()}")
    return out


class ControlServer:
    """Accepts connections on its own thread and answers each with one handler call."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.path: Path | None = None
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def bind(self, candidates: list[Path], explicit: bool) -> list[str]:
        """Listen on the first usable candidate; returns why each earlier one was passed over.

        Raises OSError naming every problem when none is usable; its errno is EADDRINUSE
        when a live daemon listens at one of them.
        """
        skipped: list[str] = []
        in_use = False
        for path in candidates:
            try:
                self._bind(path, create_parent=not explicit)
                return skipped
            except OSError as exc:
                in_use = in_use or exc.errno == errno.EADDRINUSE
                skipped.append(f"{path}: {exc.strerror or exc}")
        raise OSError(errno.EADDRINUSE if in_use else errno.EADDRNOTAVAIL, "; ".join(skipped))

    def _bind(self, path: Path, create_parent: bool) -> None:
        if create_parent:
            _private_dir(path.parent)
            _sweep(path.parent)
        _clear_stale(path)
        # Bound and listening under a temporary name, then renamed into place: a client never
        # finds the path without a listener behind it.
        temp = path.with_name(f".{os.getpid():x}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o117)  # born 0660: no moment with a wider mode
        try:
            if os.path.lexists(temp):
                os.unlink(temp)
            sock.bind(str(temp))
            os.chmod(temp, 0o660)
            sock.listen(8)
            _publish(temp, path)
        except OSError:
            sock.close()
            if os.path.lexists(temp):
                os.unlink(temp)
            raise
        finally:
            os.umask(old)
        st = os.stat(path)
        self._sock, self.path, self._identity = sock, path, (st.st_dev, st.st_ino)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._sock is not None:
            try:  # wakes the blocked accept() (EINVAL on Linux): the server thread never polls
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread.is_alive():
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
        if self.path is not None:
            try:  # only our own socket: another daemon may have taken the path since
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    os.unlink(self.path)
            except OSError:
                pass

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                continue
            with conn:
                try:
                    conn.settimeout(CLIENT_TIMEOUT)
                    self._answer(conn)
                except OSError:
                    pass  # the client went away or stalled: its problem, not ours

    def _answer(self, conn: socket.socket) -> None:
        try:
            request = _parse(_read_line(conn, MAX_REQUEST))
            handler = self.handlers.get(request["request"])
            if handler is None:
                raise ControlError(f"unknown request {request['request']!r}; this socket answers only "
                                   f"{' and '.join(sorted(self.handlers))}")
            reply = {"ok": True, **handler(request)}
        except ControlError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug answers with an error, the server lives on
            reply = {"ok": False, "error": f"internal error: {exc!r}"}
        conn.sendall(json.dumps(reply).encode() + b"\n")


def _read_line(conn: socket.socket, limit: int) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ControlError(f"request too long (more than {limit} bytes)")
    return data.split(b"\n", 1)[0]


def _parse(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError:
        raise ControlError('not a JSON request; send one line such as {"request": "status"}') from None
    if not isinstance(request, dict) or not isinstance(request.get("request"), str):
        raise ControlError('expected a JSON object with a "request" string, e.g. {"request": "status"}')
    return request


def _private_dir(path: Path) -> None:
    """Create the socket's folder (0750), refusing one that is a symlink or someone else's."""
    try:
        os.mkdir(path, 0o750)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path} is not a directory")
    if st.st_uid != os.geteuid() and path.parent == Path(tempfile.gettempdir()):
        raise OSError(errno.EPERM, f"{path} belongs to uid {st.st_uid}, not to this user")


def _publish(temp: Path, path: Path) -> None:
    """Give the socket its real name unless a daemon started meanwhile has taken it."""
    try:
        os.link(temp, path)  # unlike rename, never replaces what is there
    except FileExistsError:
        raise OSError(errno.EADDRINUSE, "another daemon is listening there") from None
    except OSError:
        os.rename(temp, path)  # a file system without hard links
        return
    os.unlink(temp)


def _sweep(folder: Path) -> None:
    """Remove sockets that daemons killed without a chance to clean up left in a shared folder."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith("control-") and n.endswith(".sock")]
    except OSError:
        return
    for name in names:
        try:
            _clear_stale(folder / name)
        except OSError:
            pass  # alive, or not ours to judge


def _clear_stale(path: Path) -> None:
    """Remove a socket left by a daemon that died; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket (left alone)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(CLIENT_TIMEOUT)
    try:
        probe.connect(str(path))
        pid = _peer_pid(probe)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return  # bind reports what is wrong
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another daemon{f' (pid {pid})' if pid else ''} is listening there")


def _peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of a connected UNIX socket (0: unknown)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    return struct.unpack("3i", creds)[0]


# -- client ------------------------------------------------------------------------------
def ask(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the socket at `path`; OSError when nobody answers there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        line = _read_line(sock, MAX_REPLY)
    try:
        reply = json.loads(line)
    except ValueError:
        raise OSError(errno.EPROTO, f"{path} did not answer with JSON (is it a foldermirror socket?)") from None
    if not isinstance(reply, dict):
        raise OSError(errno.EPROTO, f"{path} answered with something that is not a JSON object")
    return reply


def ask_daemon(config: Config, request: dict[str, Any]) -> dict[str, Any]:
    """Ask the daemon that runs `config`; NotRunningError when none answers.

    Each candidate socket is first asked for its status, so that a daemon running another
    config at a shared default path is passed over rather than answered for.
    """
    own = os.path.realpath(config.path)
    tried: list[str] = []
    denied: list[str] = []
    for path in lookup_paths(config):
        try:
            status = ask(path, {"request": "status"})
        except FileNotFoundError:
            tried.append(f"{path} (absent)")
            continue
        except ConnectionRefusedError:
            tried.append(f"{path} (nobody listening)")
            continue
        except PermissionError:
            denied.append(str(path))
            continue
        except (OSError, ControlError) as exc:
            tried.append(f"{path} ({exc})")
            continue
        running = (status.get("status") or {}).get("config")
        if config.control_socket is None and running is not None and os.path.realpath(running) != own:
            tried.append(f"{path} (a daemon for another config, {running})")
            continue
        return status if request == {"request": "status"} else ask(path, request)
    if denied:
        raise FoldermirrorError(f"permission denied on the control socket {', '.join(denied)}: run this as "
                                "the service user or as a member of its group")
    raise NotRunningError(f"no foldermirror daemon is running for {config.path}; looked for its control "
                          f"socket at: {', '.join(tried)}")
