"""YAML config → frozen dataclasses, with errors that name file, line, column and key."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from foldermirror.errors import ConfigError

DEFAULT_SETTLE = 0.25
DEFAULT_MAX_DELAY = 5.0
DEFAULT_RESCAN = 3600.0
DEFAULT_STOP_GRACE = 10.0
DEFAULT_MAX_DELETE_FRACTION = 0.5
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp")
SOCKET_PATH_MAX = 100  # sun_path holds 107 bytes; the socket is bound under a temporary name of up to 7 first

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_STD_TAG = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {_STD_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}


@dataclass(frozen=True)
class FolderConfig:
    name: str
    source: Path
    target: Path
    delete: bool = False
    exclude: tuple[str, ...] = ()
    settle: float = DEFAULT_SETTLE
    durable: bool = False
    create: bool = False
    max_delete_fraction: float = DEFAULT_MAX_DELETE_FRACTION
    max_delay: float = DEFAULT_MAX_DELAY   # a file that never goes quiet is published this often (0: never)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"
    trace: tuple[str, ...] = ()   # globs of paths whose pipeline is logged at debug level


@dataclass(frozen=True)
class MetricsConfig:
    host: str
    port: int

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    path: Path
    folders: tuple[FolderConfig, ...]
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    rescan_interval: float = DEFAULT_RESCAN
    stop_grace: float = DEFAULT_STOP_GRACE
    log: LogConfig = LogConfig()
    control_socket: Path | None = None   # None: $RUNTIME_DIRECTORY or /run/foldermirror (control.py)
    metrics: MetricsConfig | None = None

    def folder(self, name: str) -> FolderConfig:
        for f in self.folders:
            if f.name == name:
                return f
        raise KeyError(name)


def parse_duration(value: Any) -> float:
    """Seconds from 1.5, "250ms", "10s", "5m", "1h" or "1d"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 10s, 5m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 250ms, 10s, 5m or 1h, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


class _Reader:
    """Walks the composed YAML node tree so every error can point at a line and column."""

    def __init__(self, file: str) -> None:
        self.file = file

    def error(self, node: yaml.Node | None, key: str | None, message: str) -> ConfigError:
        if node is None:
            return ConfigError(self.file, message, key=key)
        mark = node.start_mark
        return ConfigError(self.file, message, line=mark.line + 1, column=mark.column + 1, key=key)

    def check_tag(self, node: yaml.Node, key: str) -> None:
        if node.tag not in _ALLOWED_TAGS:
            raise self.error(node, key, f"YAML tag {node.tag!r} is not allowed (plain values only)")

    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        self.check_tag(node, key)
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, f"expected a mapping, got {_describe(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            self.check_tag(knode, key)
            if not isinstance(knode, yaml.ScalarNode) or knode.tag != _STD_TAG + "str":
                raise self.error(knode, key, "keys must be plain strings")
            name = knode.value
            path = f"{key}.{name}" if key else name
            if name in out:
                first = out[name][0].start_mark.line + 1
                raise self.error(knode, path, f"duplicate key (first given on line {first})")
            if name not in allowed:
                hint = difflib.get_close_matches(name, allowed, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(allowed)}"
                raise self.error(knode, path, f"unknown key{extra}")
            self.check_tag(vnode, path)
            out[name] = (knode, vnode)
        return out

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, key, f"expected a single value, got {_describe(node)}")
        return yaml.SafeLoader.construct_object(_LOADER, node)

    def typed(self, node: yaml.Node, key: str, kind: str, convert: Callable[[Any], Any]) -> Any:
        value = self.scalar(node, key)
        try:
            return convert(value)
        except (TypeError, ValueError) as exc:
            detail = str(exc) or f"expected {kind}, got {value!r}"
            raise self.error(node, key, detail) from None


class _NullLoader(yaml.SafeLoader):
    def __init__(self) -> None:  # construct_object needs an instance, not a stream
        yaml.SafeLoader.__init__(self, "")


_LOADER = _NullLoader()


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _as_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1 (1 turns the guard off), got {value!r}")
    return float(value)


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value
    return convert


def _as_listen(value: Any) -> MetricsConfig:
    """host:port, [v6-address]:port; port 0 asks the kernel for a free one."""
    if not isinstance(value, str):
        raise ValueError(f"expected host:port such as 127.0.0.1:9108, got {value!r}")
    host, sep, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:9108, got {value!r}")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port such as 127.0.0.1:9108, got {value!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    return MetricsConfig(host, int(port))


def _as_socket_path(base: Path) -> Callable[[Any], Path]:
    def convert(value: Any) -> Path:
        path = Path(os.path.expanduser(_as_str(value)))
        path = path if path.is_absolute() else base / path
        size = len(os.fsencode(str(path)))
        if size > SOCKET_PATH_MAX:
            raise ValueError(f"{path} is {size} bytes long; a UNIX socket path can have at most {SOCKET_PATH_MAX}")
        return path
    return convert


_TOP_KEYS = ("workers", "rescan_interval", "stop_grace", "log", "control_socket", "metrics", "folders")
_LOG_KEYS = ("level", "format", "trace")
_METRICS_KEYS = ("listen",)
_FOLDER_KEYS = ("name", "source", "target", "delete", "exclude", "settle", "durable", "create",
                "max_delete_fraction", "max_delay")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigError naming file, line and key."""
    file = str(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "config file not found" + private_tmp_hint(os.path.abspath(file))) from None
    except IsADirectoryError:
        raise ConfigError(file, "is a directory, expected a YAML file") from None
    except PermissionError:
        raise ConfigError(file, "permission denied reading the config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(file, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(file, f"cannot read: {exc.strerror}") from None
    return parse_config(text, file)


def parse_config(text: str, file: str) -> Config:
    reader = _Reader(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        problem = exc.problem or "invalid YAML"
        if mark is None:
            raise ConfigError(file, f"invalid YAML: {problem}") from None
        raise ConfigError(file, f"invalid YAML: {problem}", line=mark.line + 1, column=mark.column + 1) from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, f"invalid YAML: {exc}") from None
    if root is None:
        raise ConfigError(file, "the config file is empty; it needs at least a 'folders' list")
    top = reader.mapping(root, "", _TOP_KEYS)
    base = Path(os.path.dirname(os.path.abspath(file)))

    values: dict[str, Any] = {}
    if "workers" in top:
        node = top["workers"][1]
        workers = reader.typed(node, "workers", "a whole number", _as_int)
        if workers < 1:
            raise reader.error(node, "workers", f"must be at least 1, got {workers}")
        values["workers"] = workers
    for key in ("rescan_interval", "stop_grace"):
        if key in top:
            values[key] = reader.typed(top[key][1], key, "a duration", parse_duration)
    if "log" in top:
        log = reader.mapping(top["log"][1], "log", _LOG_KEYS)
        values["log"] = LogConfig(
            level=reader.typed(log["level"][1], "log.level", "", _one_of(LOG_LEVELS)) if "level" in log else "info",
            format=reader.typed(log["format"][1], "log.format", "", _one_of(LOG_FORMATS)) if "format" in log else "auto",
            trace=_globs(reader, log["trace"][1], "log.trace") if "trace" in log else (),
        )
    if "control_socket" in top:
        values["control_socket"] = reader.typed(top["control_socket"][1], "control_socket", "",
                                                _as_socket_path(base))
    if "metrics" in top:
        metrics = reader.mapping(top["metrics"][1], "metrics", _METRICS_KEYS)
        if "listen" not in metrics:
            raise reader.error(top["metrics"][1], "metrics.listen", "missing: give host:port, e.g. 127.0.0.1:9108")
        values["metrics"] = reader.typed(metrics["listen"][1], "metrics.listen", "", _as_listen)
    if "folders" not in top:
        raise reader.error(root, "folders", "missing: list at least one source/target pair")
    fnode = top["folders"][1]
    if not isinstance(fnode, yaml.SequenceNode) or not fnode.value:
        raise reader.error(fnode, "folders", "expected a non-empty list of folder pairs")
    folders = [_folder(reader, node, f"folders[{i}]", base) for i, node in enumerate(fnode.value)]
    _check_pairs(reader, folders, fnode.value)
    return Config(path=Path(os.path.abspath(file)), folders=tuple(f for f, _ in folders), **values)


def _globs(reader: _Reader, node: yaml.Node, key: str) -> tuple[str, ...]:
    """One glob or a list of them."""
    if isinstance(node, yaml.SequenceNode):
        return tuple(reader.typed(p, f"{key}[{i}]", "", _as_str) for i, p in enumerate(node.value))
    return (reader.typed(node, key, "", _as_str),)


def _folder(reader: _Reader, node: yaml.Node, key: str, base: Path) -> tuple[FolderConfig, dict[str, tuple[yaml.Node, yaml.Node]]]:
    m = reader.mapping(node, key, _FOLDER_KEYS)
    for required in ("source", "target"):
        if required not in m:
            raise reader.error(node, f"{key}.{required}", "missing (every folder pair needs a source and a target)")
    create = reader.typed(m["create"][1], f"{key}.create", "", _as_bool) if "create" in m else False
    source = _resolve(reader.typed(m["source"][1], f"{key}.source", "", _as_str), base)
    target = _resolve(reader.typed(m["target"][1], f"{key}.target", "", _as_str), base)
    if not create:
        snode = m["source"][1]
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise reader.error(snode, f"{key}.source", f"{source} does not exist (set create: true to create it)"
                               + private_tmp_hint(str(source))) from None
        except OSError as exc:
            raise reader.error(snode, f"{key}.source", f"{source}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise reader.error(snode, f"{key}.source", f"{source} is not a directory")
    exclude: tuple[str, ...] = ()
    if "exclude" in m:
        enode = m["exclude"][1]
        if not isinstance(enode, yaml.SequenceNode):
            raise reader.error(enode, f"{key}.exclude", "expected a list of glob patterns")
        exclude = tuple(reader.typed(p, f"{key}.exclude[{i}]", "", _as_str) for i, p in enumerate(enode.value))
    name = reader.typed(m["name"][1], f"{key}.name", "", _as_str) if "name" in m else (source.name or "root")
    folder = FolderConfig(
        name=name,
        source=source,
        target=target,
        delete=reader.typed(m["delete"][1], f"{key}.delete", "", _as_bool) if "delete" in m else False,
        exclude=exclude,
        settle=reader.typed(m["settle"][1], f"{key}.settle", "", parse_duration) if "settle" in m else DEFAULT_SETTLE,
        durable=reader.typed(m["durable"][1], f"{key}.durable", "", _as_bool) if "durable" in m else False,
        create=create,
        max_delete_fraction=(reader.typed(m["max_delete_fraction"][1], f"{key}.max_delete_fraction", "", _fraction)
                             if "max_delete_fraction" in m else DEFAULT_MAX_DELETE_FRACTION),
        max_delay=(reader.typed(m["max_delay"][1], f"{key}.max_delay", "", parse_duration)
                   if "max_delay" in m else DEFAULT_MAX_DELAY),
    )
    return folder, m


def under_private_tmp(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in PRIVATE_TMP_DIRS)


def private_tmp_hint(path: str) -> str:
    """Why a path under /tmp may be missing when systemd runs us (INVOCATION_ID is set)."""
    if os.environ.get("INVOCATION_ID") and under_private_tmp(path):
        return ("; the service runs with PrivateTmp=yes, so its /tmp and /var/tmp are its own and empty: "
                "move this path out of them")
    return ""


def _resolve(raw: str, base: Path) -> Path:
    # realpath: a root given as a symlink gets no inotify events (PITFALLS #4), and the
    # overlap checks below must compare real locations.
    path = Path(os.path.expanduser(raw))
    if not path.is_absolute():
        path = base / path
    return Path(os.path.realpath(path))


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_pairs(reader: _Reader, folders: list[tuple[FolderConfig, dict[str, tuple[yaml.Node, yaml.Node]]]],
                 nodes: list[yaml.Node]) -> None:
    names: dict[str, int] = {}
    for i, (f, m) in enumerate(folders):
        key = f"folders[{i}]"
        if f.name in names:
            where = m["name"][1] if "name" in m else nodes[i]
            raise reader.error(where, f"{key}.name", f"folder name {f.name!r} is already used by folders[{names[f.name]}]")
        names[f.name] = i
        tnode = m["target"][1]
        if f.target == f.source:
            raise reader.error(tnode, f"{key}.target", f"target is the source itself ({f.source})")
        if _inside(f.target, f.source):
            raise reader.error(tnode, f"{key}.target", f"target {f.target} is inside its source {f.source}: the mirror would mirror itself")
        if _inside(f.source, f.target):
            raise reader.error(tnode, f"{key}.target", f"target {f.target} contains its source {f.source}")
    for i, (a, ma) in enumerate(folders):
        for j, (b, _) in enumerate(folders):
            if i == j:
                continue
            tnode = ma["target"][1]
            key = f"folders[{i}].target"
            if j < i and (_inside(a.target, b.target) or _inside(b.target, a.target)):
                how = "the same as" if a.target == b.target else "nested with"
                raise reader.error(tnode, key, f"target {a.target} is {how} the target of folders[{j}] ({b.target})")
            if _inside(a.target, b.source):
                raise reader.error(tnode, key, f"target {a.target} is inside the source of folders[{j}] ({b.source}): mirrors would feed each other")
            if _inside(b.source, a.target):
                raise reader.error(tnode, key, f"target {a.target} contains the source of folders[{j}] ({b.source})")
