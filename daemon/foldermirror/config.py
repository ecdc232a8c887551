"""YAML config → frozen dataclasses, with errors that name file, line, column and key."""

from __future__ import annotations

import codecs
import difflib
import ipaddress
import math
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
PATH_MAX = 4095        # bytes, as Linux counts them (4096 with the final NUL)
NAME_MAX = 255
MAX_WORKERS = 1024
MAX_DURATION = 366 * 86400.0   # also keeps every timeout far below threading.TIMEOUT_MAX
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_FOLDERS = 1000    # every pair of folders is checked for overlap: 1000 take about a second

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_STD_TAG = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {_STD_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}
# A plain value starting with one of these is YAML syntax, not text: an alias, a tag, an anchor.
_SIGILS = {"*": "an alias", "!": "a tag", "&": "an anchor"}
_SIGIL_START = re.compile(r"(?:^|(?<=[\s\[{,]))([*!&])", re.M)
_SIGIL_WORD = re.compile(r"[*!&][^\s,\[\]{}]*")


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
    """Seconds from 1.5, "250ms", "10s", "5m", "1h" or "1d", at most 366 days; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 10s, 5m or 1h")
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            raise ValueError(f"expected a duration such as 250ms, 10s, 5m or 1h, got {_show(value)}")
    except OverflowError:
        seconds = math.inf
    if math.isnan(seconds):
        raise ValueError(f"expected a duration such as 250ms, 10s, 5m or 1h, got {_show(value)}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {_show(value)}")
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration can be at most 366d, got {_show(value)}")
    return seconds


class _Loader(yaml.SafeLoader):
    """A SafeLoader that composes only what a config can hold and knows which key it is in.

    It refuses anchors and aliases (no alias bomb can grow), tags other than the plain ones,
    several documents, deep nesting and huge trees, each with the key path; and `path` tells
    which key a syntax error happened in.
    """

    # Dates, "<<" merge keys and "=" stay plain strings (and are then refused or used as such).
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag in _ALLOWED_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.text = text
        self.file = file
        self.path: list[str | int] = []
        self.last_path = ""
        self.nodes = 0

    def key(self) -> str:
        return _key_path(self.path)

    def refuse(self, mark: yaml.Mark, message: str) -> ConfigError:
        return ConfigError(self.file, message, line=mark.line + 1, column=mark.column + 1, key=self.key() or None)

    def hint(self, event: yaml.Event) -> str:
        # Only a scalar can be text that was meant to start with *, & or !.
        if not isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
            return ""
        return _quote_hint(self.text, event.start_mark.index)

    def get_single_node(self) -> yaml.Node | None:
        self.get_event()  # stream start
        document = None if self.check_event(yaml.StreamEndEvent) else self.compose_document()
        if not self.check_event(yaml.StreamEndEvent):
            raise self.refuse(self.peek_event().start_mark,
                              "a second YAML document starts here; a config file holds exactly one "
                              "(remove the '---' or '...' line and merge what follows into the first)")
        self.get_event()
        return document

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # The step is pushed before peeking, which is what may raise a syntax error, except
        # for a key: its name is known only from its event.
        if isinstance(parent, yaml.SequenceNode):
            self.path.append(index)
        elif isinstance(parent, yaml.MappingNode) and index is not None:
            self.path.append(index.value if isinstance(index, yaml.ScalarNode) else "?")
        event = self.peek_event()
        if isinstance(parent, yaml.MappingNode) and index is None:
            self.path.append(event.value if isinstance(event, yaml.ScalarEvent) else "?")
        self.last_path = self.key()
        self.nodes += 1
        if len(self.path) > MAX_DEPTH:
            raise self.refuse(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
        if self.nodes > MAX_NODES:
            raise self.refuse(event.start_mark, f"more than {MAX_NODES:,} values; a config needs far fewer")
        if isinstance(event, yaml.AliasEvent):
            raise self.refuse(event.start_mark, "YAML aliases (*name) cannot be used in a config file"
                              + self.hint(event))
        if event.anchor is not None:
            raise self.refuse(event.start_mark, "YAML anchors (&name) cannot be used in a config file"
                              + self.hint(event))
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and tag not in _ALLOWED_TAGS:
            # A local tag ("!keep.tmp") is nearly always a pattern that was not quoted.
            hint = "" if tag.startswith(_STD_TAG) else self.hint(event)
            raise self.refuse(event.start_mark, f"YAML tag {_show_tag(tag)} is not allowed (plain values only){hint}")
        node = super().compose_node(parent, index)
        if parent is not None:
            self.path.pop()
        return node


def _key_path(steps: list[str | int]) -> str:
    out = ""
    for step in steps:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out = _join(out, step)
    return out


def _join(key: str, name: str) -> str:
    if len(name) > 40:
        name = name[:40] + "…"
    return f"{key}.{name}" if key else name


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _show_tag(tag: str) -> str:
    return _show("!!" + tag[len(_STD_TAG):] if tag.startswith(_STD_TAG) else tag)


def _quoted(word: str) -> str:
    if '"' in word or "\\" in word:
        return "'" + word.replace("'", "''") + "'"
    return f'"{word}"'


def _quote_hint(text: str, start: int, end: int | None = None) -> str:
    """What to write instead when an unquoted *, ! or & starts a value between start and end."""
    m = _SIGIL_START.search(text, start, (start if end is None else end) + 1)
    if m is None:
        return ""
    word = _SIGIL_WORD.match(text, m.start(1)).group()
    return (f"; a plain value starting with {word[0]} is read as {_SIGILS[word[0]]}: "
            f"if it is text (e.g. a pattern), write it in quotes: {_quoted(word)}")


class _Reader:
    """Walks the composed YAML node tree so every error can point at a line and column."""

    def __init__(self, file: str, loader: _Loader) -> None:
        self.file = file
        self.loader = loader

    def error(self, node: yaml.Node | None, key: str | None, message: str) -> ConfigError:
        if node is None:
            return ConfigError(self.file, message, key=key)
        mark = node.start_mark
        return ConfigError(self.file, message, line=mark.line + 1, column=mark.column + 1, key=key)

    def check_tag(self, node: yaml.Node, key: str) -> None:
        if node.tag not in _ALLOWED_TAGS:
            raise self.error(node, key, f"YAML tag {_show_tag(node.tag)} is not allowed (plain values only)")

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
            path = _join(key, name)
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
        self.check_tag(node, key)
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, key, f"expected a single value, got {_describe(node)}")
        try:
            return self.loader.construct_object(node)
        except Exception as exc:  # e.g. an int of more than 4,300 digits (ValueError)
            raise self.error(node, key, f"cannot read {_show(node.value)}: {exc}") from None

    def typed(self, node: yaml.Node, key: str, kind: str, convert: Callable[[Any], Any]) -> Any:
        value = self.scalar(node, key)
        try:
            return convert(value)
        except (TypeError, ValueError, ArithmeticError) as exc:
            detail = str(exc) or f"expected {kind}, got {_show(value)}"
            raise self.error(node, key, detail) from None


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _show(node.value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {_show(value)}")
    return value


def _as_workers(value: Any) -> int:
    workers = _as_int(value)
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"must be at least 1 and at most {MAX_WORKERS}, got {_show(workers)}")
    return workers


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    return value


def _as_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {_show(value)}")
    if "\0" in value:
        raise ValueError(f"a NUL character cannot be part of a value, got {_show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"a lone surrogate (\\ud800-\\udfff) is not text, got {_show(value)}") from None
    return value


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:  # also refuses nan
        raise ValueError(f"expected a number from 0 to 1 (1 turns the guard off), got {_show(value)}")
    return float(value)


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {_show(value)}")
        return value
    return convert


def _as_listen(value: Any) -> MetricsConfig:
    """host:port, [v6-address]:port; port 0 asks the kernel for a free one."""
    if not isinstance(value, str):
        raise ValueError(f"expected host:port such as 127.0.0.1:9108, got {_show(value)}")
    host, sep, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_show(host)} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:9108, got {_show(value)}")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"expected host:port such as 127.0.0.1:9108, got {_show(value)}")
    if len(port) > 5 or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {_show(port)}")
    return MetricsConfig(host, int(port))


def _as_socket_path(base: Path) -> Callable[[Any], Path]:
    def convert(value: Any) -> Path:
        path = Path(os.path.expanduser(_as_str(value)))
        path = path if path.is_absolute() else base / path
        size = len(os.fsencode(str(path)))
        if size > SOCKET_PATH_MAX:
            raise ValueError(f"{_show(str(path))} is {size} bytes long; a UNIX socket path can have at most {SOCKET_PATH_MAX}")
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
        with open(file, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(file, "config file not found" + private_tmp_hint(os.path.abspath(file))) from None
    except IsADirectoryError:
        raise ConfigError(file, "is a directory, expected a YAML file") from None
    except PermissionError:
        raise ConfigError(file, "permission denied reading the config file") from None
    except OSError as exc:
        raise ConfigError(file, f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(file, f"the file is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config needs far less")
    return parse_config(_decode(data, file), file)


def _decode(data: bytes, file: str) -> str:
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise ConfigError(file, "the file is UTF-32 text: save it as UTF-8")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigError(file, "the file is UTF-16 text: save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode("utf-8")
        line, column = _line_column(before, len(before))
        raise ConfigError(file, f"not UTF-8 text: byte 0x{data[exc.start]:02x} ({exc.reason}); save the file as UTF-8",
                          line=line, column=column, key=_key_near(before, file) or None) from None


def _line_column(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _key_near(text: str, file: str) -> str:
    """The key path at the end of `text`, the part of a file before a fault YAML cannot get past."""
    loader = None
    try:
        loader = _Loader(text, file)
        loader.get_single_node()
        return loader.last_path
    except Exception:
        return loader.key() if loader is not None else ""
    finally:
        if loader is not None:
            loader.dispose()


def parse_config(text: str, file: str) -> Config:
    """Validate the text of a config file; whatever it holds, the only exception is ConfigError."""
    loader = None
    try:
        loader = _compose_loader(text, file)
        return _parse(loader, file)
    except ConfigError:
        raise
    except Exception as exc:
        # Not a fault the checks above know about: still no traceback, but a message that
        # shows what went wrong, so a bug here gets reported rather than hidden.
        where = loader.key() if loader is not None else ""
        raise ConfigError(file, f"cannot read the config: {exc!r} (if the file looks right, "
                                "please report this as a bug)", key=where or None) from exc
    finally:
        if loader is not None:
            loader.dispose()


def _compose_loader(text: str, file: str) -> _Loader:
    try:
        return _Loader(text, file)
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(text, exc.position)
        if exc.character == 0:
            what = "a NUL character"
            if text.count("\0") * 4 > len(text):
                what += " (the file looks like UTF-16 text: save it as UTF-8)"
        else:
            what = f"the control character #x{exc.character:02x}"
        raise ConfigError(file, f"invalid YAML: {what}, which YAML does not allow", line=line, column=column,
                          key=_key_near(text[:exc.position], file) or None) from None


def _yaml_error(exc: yaml.YAMLError, loader: _Loader) -> ConfigError:
    key = loader.key() or None
    if not isinstance(exc, yaml.MarkedYAMLError):
        return ConfigError(loader.file, f"invalid YAML: {exc}", key=key)
    mark = exc.problem_mark or exc.context_mark
    problem = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
    if "'\\t'" in problem:
        problem += " (indent with spaces: YAML does not allow tabs there)"
    elif "'<document start>'" in problem:
        problem += " (after a '...' line; a config file holds exactly one YAML document)"
    if mark is None:
        return ConfigError(loader.file, f"invalid YAML: {problem}", key=key)
    context = exc.context_mark if exc.context_mark is not None and exc.context_mark.index <= mark.index else mark
    # The hint looks from where the failing construct started, as "[!keep.tmp]" fails only at its end.
    start = loader.text.rfind("\n", 0, context.index) + 1
    hint = _quote_hint(loader.text, start, mark.index)
    return ConfigError(loader.file, f"invalid YAML: {problem}{hint}", line=mark.line + 1, column=mark.column + 1,
                       key=key)


def _parse(loader: _Loader, file: str) -> Config:
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, loader) from None
    except (ValueError, ArithmeticError, RecursionError, MemoryError) as exc:
        mark = loader.get_mark()
        raise ConfigError(file, f"invalid YAML: {exc!r}", line=mark.line + 1, column=mark.column + 1,
                          key=loader.key() or None) from None
    if root is None:
        raise ConfigError(file, "the config file is empty; it needs at least a 'folders' list")
    reader = _Reader(file, loader)
    top = reader.mapping(root, "", _TOP_KEYS)
    base = Path(os.path.dirname(os.path.abspath(file)))

    values: dict[str, Any] = {}
    if "workers" in top:
        values["workers"] = reader.typed(top["workers"][1], "workers", "a whole number", _as_workers)
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
    if len(fnode.value) > MAX_FOLDERS:
        raise reader.error(fnode, "folders", f"at most {MAX_FOLDERS} folder pairs, got {len(fnode.value)}")
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
    source = reader.typed(m["source"][1], f"{key}.source", "", _as_folder(base))
    target = reader.typed(m["target"][1], f"{key}.target", "", _as_folder(base))
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


def _as_folder(base: Path) -> Callable[[Any], Path]:
    def convert(value: Any) -> Path:
        path = _resolve(_as_str(value), base)
        size = len(os.fsencode(str(path)))
        if size > PATH_MAX:
            raise ValueError(f"{_show(str(path))} is {size} bytes long; a path can have at most {PATH_MAX}")
        for part in path.parts:
            if len(os.fsencode(part)) > NAME_MAX:
                raise ValueError(f"{_show(part)} is longer than {NAME_MAX} bytes, too long for a file name")
        return path
    return convert


def _resolve(raw: str, base: Path) -> Path:
    # realpath: a root given as a symlink gets no inotify events (PITFALLS #4), and the
    # overlap checks below must compare real locations.
    path = Path(os.path.expanduser(raw))
    if not path.is_absolute():
        path = base / path
    return Path(os.path.realpath(path))


def _inside(inner: Path, outer: Path) -> bool:
    # On strings: both are real absolute paths, and every pair of folders is compared.
    i, o = str(inner), str(outer)
    return i == o or i.startswith(o.rstrip("/") + "/")


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
