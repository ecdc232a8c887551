"""YAML config → frozen dataclasses, with errors that name file, line, column and key."""

from __future__ import annotations

import codecs
import difflib
import functools
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from foldermirror import filters
from foldermirror.errors import ConfigError
from foldermirror.remote import url as remote_url
from foldermirror.remote.url import RemoteUrl

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
MAX_CONNECTIONS = 16  # ssh masters per host
# Options the daemon sets itself on every ssh it runs: a user's value would break the link's
# supervision (a master outside the service, a login per batch, a prompt under systemd).
SSH_OWNED_OPTIONS = ("ControlMaster", "ControlPath", "ControlPersist", "BatchMode", "ProxyCommand",
                     "StrictHostKeyChecking", "UserKnownHostsFile", "IdentityFile", "IdentitiesOnly")
_SSH_OPTION = re.compile(r"^([A-Za-z][A-Za-z0-9]*)\s*[= ]\s*(\S.*)$")
_BWLIMIT = re.compile(r"^\d+(?:\.\d+)?[KMG]?$")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_STD_TAG = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {_STD_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}
# A plain value starting with one of these is YAML syntax, not text: an alias, a tag, an anchor.
_SIGILS = {"*": "an alias", "!": "a tag", "&": "an anchor"}
_SIGIL_START = re.compile(r"(?:^|(?<=[\s\[{,]))([*!&])", re.M)
_SIGIL_WORD = re.compile(r"[*!&][^\s,\[\]{}]*")

T = TypeVar("T")


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

    def refuse(self, mark: Any, message: str) -> ConfigError:  # a yaml Mark (pure or libyaml)
        return ConfigError(self.file, message, line=mark.line + 1, column=mark.column + 1, key=self.key() or None)

    def hint(self, event: yaml.Event) -> str:
        # Only a scalar can be text that was meant to start with *, & or !.
        if not isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
            return ""
        return _quote_hint(self.text, event.start_mark.index) if event.start_mark is not None else ""

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
            assert event.start_mark is not None  # the loader always marks its events
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
        assert node is not None  # compose_node returns None only at the end of the stream
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
    word_match = _SIGIL_WORD.match(text, m.start(1))
    word = word_match.group() if word_match is not None else text[m.start(1)]
    return (f"; a plain value starting with {word[0]} is read as {_SIGILS[word[0]]}: "
            f"if it is text (e.g. a pattern), write it in quotes: {_quoted(word)}")


class _Reader:
    """Walks the composed YAML node tree so every error can point at a line and column."""

    def __init__(self, file: str, loader: _Loader, base: Path) -> None:
        self.file = file
        self.loader = loader
        self.base = base   # what relative paths are resolved against: the config file's folder

    def error(self, node: yaml.Node | None, key: str | None, message: str) -> ConfigError:
        if node is None:
            return ConfigError(self.file, message, key=key)
        mark = node.start_mark
        return ConfigError(self.file, message, line=mark.line + 1, column=mark.column + 1, key=key)

    def check_tag(self, node: yaml.Node, key: str) -> None:
        if node.tag not in _ALLOWED_TAGS:
            raise self.error(node, key, f"YAML tag {_show_tag(node.tag)} is not allowed (plain values only)")

    def mapping(self, node: yaml.Node, key: str,
                allowed: tuple[str, ...] | None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The key and value nodes of a mapping; `allowed` None: any key (e.g. host names)."""
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
            if allowed is not None and name not in allowed:
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

    def strings(self, node: yaml.Node, key: str, what: str, one: bool = False) -> tuple[str, ...]:
        """A list of non-empty strings; with `one`, a single string may also stand alone."""
        if isinstance(node, yaml.SequenceNode):
            return tuple(self.typed(item, f"{key}[{i}]", "", _as_str) for i, item in enumerate(node.value))
        if one:
            return (self.typed(node, key, "", _as_str),)
        raise self.error(node, key, f"expected {what}")

    def items(self, node: yaml.Node, key: str, what: str) -> list[yaml.Node]:
        """The item nodes of a list."""
        self.check_tag(node, key)
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, key, f"expected {what}")
        return list(node.value)

    def values(self, cls: type, node: yaml.Node, key: str) -> tuple[dict[str, Any], _Nodes]:
        """The settings `cls` declares, read from the mapping `node`, and the nodes they came from.

        Keys the mapping leaves out are left out too (the field's default applies), except
        those with a derived default.
        """
        declared = settings(cls)
        m = self.mapping(node, key, tuple(declared))
        out: dict[str, Any] = {}
        for name, s in declared.items():
            if name in m:
                out[name] = s.read(self, m[name][1], _join(key, name))
            elif s.required is not None:
                raise self.error(node, _join(key, name), s.required)
        for name, s in declared.items():
            if name not in m and s.derive is not None:
                out[name] = s.derive(out)
        return out, m

    def section(self, cls: type[T], node: yaml.Node, key: str) -> tuple[T, _Nodes]:
        values, nodes = self.values(cls, node, key)
        return cls(**values), nodes


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


def _as_listen(value: Any) -> str:
    """host:port or [v6-address]:port, written back in the one form MetricsConfig takes apart.

    Port 0 asks the kernel for a free one.
    """
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
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def _as_socket_path(base: Path) -> Callable[[Any], Path]:
    def convert(value: Any) -> Path:
        path = Path(os.path.expanduser(_as_str(value)))
        path = path if path.is_absolute() else base / path
        size = len(os.fsencode(str(path)))
        if size > SOCKET_PATH_MAX:
            raise ValueError(f"{_show(str(path))} is {size} bytes long; a UNIX socket path can have at most {SOCKET_PATH_MAX}")
        return path
    return convert


# -- settings: each config key is declared once, as a dataclass field ------------------------------
#
# A field whose metadata holds a Setting is a config key of the same name. The Setting says how
# the key's node is read (and so validated), what a missing key means (the field's own default,
# one derived from the other keys, or an error), how `check` shows the value, and what the key
# is for. The reader, `check` and tests/unit/test_config_settings.py (which holds config/example.yaml
# and README.md to every key) all walk these declarations, so a new key is one field, plus its
# lines in example.yaml and README.md. flag, duration, choice and globs are the common kinds;
# section and sections nest a dataclass of settings as a mapping or a list of mappings; setting
# takes any reader.

_SETTING = "foldermirror.setting"   # the field metadata key that holds a field's Setting
Read = Callable[["_Reader", yaml.Node, str], Any]
_Nodes = dict[str, tuple[yaml.Node, yaml.Node]]   # a mapping's keys, each with its key and value node


@dataclass(frozen=True)
class Setting:
    """How one config key is read, defaulted, shown and documented."""

    doc: str
    read: Read
    show: Callable[[Any], str] = str
    unset: str = "(none)"            # how `check` shows None
    required: str | None = None      # the error when the key is missing; None: it is optional
    derive: Callable[[dict[str, Any]], Any] | None = None   # the default, from the keys read before
    section: type | None = None      # the key holds a mapping of this class's settings...
    many: bool = False               # ...or a list of them
    restart: bool = False            # a reload does not apply it: it takes a restart

    def format(self, value: Any) -> str:
        return self.unset if value is None else self.show(value)


def setting(doc: str, read: Read, *, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING,
            **how: Any) -> Any:
    """A dataclass field that is a config key; `how` is the rest of Setting."""
    return field(default=default, default_factory=default_factory,
                 metadata={_SETTING: Setting(doc=doc, read=read, **how)})


def settings(cls: type) -> dict[str, Setting]:
    """The config keys a section class declares, in declaration order (the order they are read in)."""
    return {f.name: f.metadata[_SETTING] for f in fields(cls) if _SETTING in f.metadata}


def _default_of(cls: type, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    if f.default is not MISSING:
        return f.default
    assert f.default_factory is not MISSING, f"{cls.__name__}.{name} has no default"
    return f.default_factory()


def flag(default: bool, doc: str) -> Any:
    return setting(doc, lambda r, n, k: r.typed(n, k, "", _as_bool), default=default, show=show_bool)


def duration(default: float, doc: str) -> Any:
    return setting(doc, lambda r, n, k: r.typed(n, k, "", parse_duration), default=default, show=format_duration)


def choice(choices: tuple[str, ...], default: str, doc: str) -> Any:
    return setting(doc, lambda r, n, k: r.typed(n, k, "", _one_of(choices)), default=default)


def globs(doc: str, *, one: bool = False) -> Any:
    """A list of glob patterns; with `one`, a single pattern may also be given on its own."""
    return setting(doc, lambda r, n, k: r.strings(n, k, "a list of glob patterns", one=one), default=(),
                   show=show_list)


def section(cls: type, doc: str, **how: Any) -> Any:
    """A nested mapping whose keys are the settings `cls` declares."""
    return setting(doc, lambda r, n, k: r.section(cls, n, k)[0], section=cls, **how)


def sections(cls: type, doc: str, *, what: str, limit: Callable[[], int] | None = None,
             check: Callable[[_Reader, list[tuple[Any, _Nodes]], list[yaml.Node]], None] | None = None,
             **how: Any) -> Any:
    """A non-empty list of mappings of `cls`'s settings (`what` names them in errors).

    `limit` is called when reading, so a test can lower it; `check` sees every item, with
    the nodes it came from, once all are read.
    """
    def read(reader: _Reader, node: yaml.Node, key: str) -> tuple[Any, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise reader.error(node, key, f"expected a non-empty list of {what}")
        if limit is not None and len(node.value) > limit():
            raise reader.error(node, key, f"at most {limit()} {what}, got {len(node.value)}")
        items: list[Any] = [reader.section(cls, item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        if check is not None:
            check(reader, items, node.value)
        return tuple(obj for obj, _ in items)
    return setting(doc, read, section=cls, many=True, **how)


def format_duration(seconds: float) -> str:
    """`seconds` in the largest unit it is a whole number of (250ms, 90s, 5m, 1h, 2d), as parse_duration reads it."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s", "ms"):
        count = seconds / _UNITS[unit]
        if count >= 1 and math.isclose(count, round(count), rel_tol=1e-12):
            return f"{round(count)}{unit}"
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"   # not :g, whose 1e-05 is no duration


def show_bool(value: bool) -> str:
    return "true" if value else "false"


def show_list(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "(none)"


# What a setting reads: each looks its converter up when called, so the converters stay patchable.
def _read_text(reader: _Reader, node: yaml.Node, key: str) -> str:
    return reader.typed(node, key, "", _as_str)


def _read_folder(reader: _Reader, node: yaml.Node, key: str) -> Path:
    return reader.typed(node, key, "", _as_folder(reader.base))


def _read_target(reader: _Reader, node: yaml.Node, key: str) -> Path | RemoteUrl:
    text = reader.typed(node, key, "", _as_str)
    if remote_url.is_remote(text):
        return reader.typed(node, key, "", remote_url.parse)
    return reader.typed(node, key, "", _as_folder(reader.base))


def _read_file(reader: _Reader, node: yaml.Node, key: str) -> Path:
    """A file that must exist (known_hosts, a key): its absence is found now, not at the first connection."""
    path = reader.typed(node, key, "", _as_folder(reader.base))
    try:
        st = os.stat(path)
    except OSError as exc:
        raise reader.error(node, key, f"{path}: {exc.strerror}" + private_tmp_hint(str(path))) from None
    if not stat.S_ISREG(st.st_mode):
        raise reader.error(node, key, f"{path} is not a file")
    return path


def _as_ssh_option(value: Any) -> str:
    m = _SSH_OPTION.match(_as_str(value))
    if m is None:
        raise ValueError(f"expected an ssh option as Name=value (see ssh_config(5)), got {_show(value)}")
    owned = {o.lower(): o for o in SSH_OWNED_OPTIONS}
    if m.group(1).lower() in owned:
        raise ValueError(f"{owned[m.group(1).lower()]} is set by the daemon itself and cannot be given here"
                         + ("; use identity_file" if m.group(1).lower() in ("identityfile", "identitiesonly") else "")
                         + ("; use known_hosts" if m.group(1).lower() in ("userknownhostsfile", "stricthostkeychecking") else ""))
    return f"{m.group(1)}={m.group(2)}"


# What a mirror may keep beside bytes, mode and mtime, each named after what it keeps; the
# rsync flag each matches is in the README's "What a mirror keeps".
PRESERVABLE = ("xattrs", "acls", "hardlinks", "sparse", "owner")


def _as_preserved(value: Any) -> str:
    name = _as_str(value)
    if name not in PRESERVABLE:
        hint = difflib.get_close_matches(name, PRESERVABLE, n=1)
        raise ValueError(f"unknown property {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                         + f"; a mirror can keep {', '.join(PRESERVABLE)}")
    return name


def _read_preserve(reader: _Reader, node: yaml.Node, key: str) -> tuple[str, ...]:
    names = [reader.typed(item, f"{key}[{i}]", "", _as_preserved)
             for i, item in enumerate(reader.items(node, key, f"a list from {', '.join(PRESERVABLE)}"))]
    return tuple(n for n in PRESERVABLE if n in names)  # one order, duplicates folded


def _as_bwlimit(value: Any) -> int:
    """KiB/s, written as a number of KiB/s or with K, M or G as rsync takes it."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else _as_str(value)
    if not _BWLIMIT.match(text):
        raise ValueError(f"expected a rate in KiB/s, optionally with K, M or G (e.g. 500, 10M), got {_show(value)}")
    scale = {"K": 1, "M": 1024, "G": 1024 * 1024}.get(text[-1], 1)
    kib = int(float(text.rstrip("KMG")) * scale)
    if kib < 1:
        raise ValueError(f"must be at least 1 KiB/s, got {_show(value)}")
    return kib


def _as_connections(value: Any) -> int:
    n = _as_int(value)
    if not 1 <= n <= MAX_CONNECTIONS:
        raise ValueError(f"must be at least 1 and at most {MAX_CONNECTIONS}, got {_show(n)}")
    return n


def _read_socket(reader: _Reader, node: yaml.Node, key: str) -> Path:
    return reader.typed(node, key, "", _as_socket_path(reader.base))


def _check_folders(reader: _Reader, folders: list[tuple[FolderConfig, _Nodes]], nodes: list[yaml.Node]) -> None:
    for i, (f, m) in enumerate(folders):
        if not f.create:
            _check_source(reader, f.source, m["source"][1], f"folders[{i}].source")
    _check_pairs(reader, folders, nodes)


def _check_source(reader: _Reader, source: Path, node: yaml.Node, key: str) -> None:
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise reader.error(node, key, f"{source} does not exist (set create: true to create it)"
                           + private_tmp_hint(str(source))) from None
    except OSError as exc:
        raise reader.error(node, key, f"{source}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise reader.error(node, key, f"{source} is not a directory")


_PAIR_NEEDS = "missing (every folder pair needs a source and a target)"
KEEP_POLICIES = ("age", "count", "staggered")
DEFAULT_VERSIONS_SUFFIX = ".versions"


def _as_versions_path(value: Any) -> Path:
    """An absolute path (on the target's host for a remote target), normalised but not resolved here."""
    text = os.path.expanduser(_as_str(value))
    if not text.startswith("/"):
        raise ValueError(f"expected an absolute path (on the target's file system), got {_show(value)}")
    if len(os.fsencode(text)) > PATH_MAX:
        raise ValueError(f"{_show(text)} is longer than {PATH_MAX} bytes")
    return Path(os.path.normpath(text))


def _as_count(value: Any) -> int:
    n = _as_int(value)
    if not 1 <= n <= 1_000_000:
        raise ValueError(f"must be at least 1 and at most 1000000, got {_show(n)}")
    return n


@dataclass(frozen=True)
class VersionsConfig:
    """What the mirror replaces or deletes is kept here first (README: Versions)."""

    path: Path | None = setting(
        "the versions area, an absolute path on the target's file system outside the target; default: beside "
        "the target, .NAME.versions in the target's parent folder",
        lambda r, n, k: r.typed(n, k, "", _as_versions_path), default=None, unset="(beside the target)")
    keep: str = choice(KEEP_POLICIES, "age", "which versions are kept: age (every version, up to max_age), count "
                                             "(the newest `count` of each path) or staggered (all for an hour, one "
                                             "an hour for a day, one a day for 30 days, one a week up to max_age)")
    max_age: float = duration(30 * 86400.0, "versions older than this are pruned, whatever keep says "
                                            "(0: never by age)")
    count: int = setting("with keep: count, how many versions of each path are kept",
                         lambda r, n, k: r.typed(n, k, "", _as_count), default=5)


def _read_versions(reader: _Reader, node: yaml.Node, key: str) -> VersionsConfig:
    value, nodes = reader.section(VersionsConfig, node, key)
    if "count" in nodes and value.keep != "count":
        raise reader.error(nodes["count"][0], _join(key, "count"),
                           f"count applies only to keep: count (keep is {value.keep}); remove it or set keep: count")
    return value


@dataclass(frozen=True)
class PatternFile:
    """An exclude_from file and the patterns it held when the config was read.

    The patterns are part of the folder's config, so a reload that finds the file changed
    (and the YAML not) still sees a changed folder, and serves it anew.
    """

    path: Path
    patterns: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.path} ({len(self.patterns)} pattern{'' if len(self.patterns) == 1 else 's'})"


def _read_excludes(reader: _Reader, node: yaml.Node, key: str) -> tuple[str, ...]:
    """Gitignore patterns, each checked (a lone "!" or a trailing "\\" is refused with its key)."""
    patterns = reader.strings(node, key, "a list of gitignore patterns")
    for i, (pattern, item) in enumerate(zip(patterns, node.value, strict=True)):
        try:
            filters.check_pattern(pattern)
        except filters.PatternError as exc:
            raise reader.error(item, f"{key}[{i}]", str(exc)) from None
    return patterns


def _read_pattern_files(reader: _Reader, node: yaml.Node, key: str) -> tuple[PatternFile, ...]:
    """One file or a list of them, each read now (a missing or unreadable one is an error naming it)."""
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    out = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]" if isinstance(node, yaml.SequenceNode) else key
        path = reader.typed(item, where, "", _as_folder(reader.base))
        try:
            patterns = filters.load_pattern_file(str(path))
        except OSError as exc:
            raise reader.error(item, where, f"cannot read the exclude file {path}: {exc.strerror or exc}"
                               + private_tmp_hint(str(path))) from None
        except (UnicodeDecodeError, filters.PatternError) as exc:
            raise reader.error(item, where, f"the exclude file {path}: {exc}") from None
        out.append(PatternFile(path, patterns))
    return tuple(out)


@dataclass(frozen=True)
class FolderConfig:
    name: str = setting("the folder's name in logs, status and metrics; default: the source folder's name",
                        _read_text, derive=lambda values: values["source"].name or "root")
    source: Path = setting("the folder to watch; must exist and be a directory unless create is true",
                           _read_folder, required=_PAIR_NEEDS)
    target: Path | RemoteUrl = setting(
        "where the mirror is kept: a local folder, or ssh://[user@]host[:port]/path on another machine (see ssh); "
        "created if missing; must not overlap any source or target", _read_target, required=_PAIR_NEEDS)
    delete: bool = flag(False, "replay deletions and renames in the source into the target")
    exclude: tuple[str, ...] = setting(
        "gitignore patterns on the path relative to the source that are not mirrored (a later one wins; "
        "! re-includes)", _read_excludes, default=(), show=show_list)
    exclude_from: tuple[PatternFile, ...] = setting(
        "files of gitignore patterns (one file or a list; relative to the config file's folder), read at start "
        "and on every reload; their patterns come after exclude's, so they win", _read_pattern_files,
        default=(), show=lambda files: ", ".join(map(str, files)) or "(none)")
    settle: float = duration(0.25, "how long a file written without close must stay quiet before it is copied")
    durable: bool = flag(False, "fsync each file and its folder before reporting it mirrored")
    create: bool = flag(False, "create a missing source folder instead of refusing it")
    max_delete_fraction: float = setting(
        "with delete, a whole-folder comparison that would delete more than this fraction of the target "
        "holds those deletions back (1 turns the guard off)",
        lambda r, n, k: r.typed(n, k, "", _fraction), default=0.5, show=lambda v: f"{v:g}")
    max_delay: float = duration(5.0, "a file that never goes quiet is published this often anyway (0: only once quiet)")
    preserve: tuple[str, ...] = setting(
        "what the mirror keeps beside bytes, mode and mtime: any of " + ", ".join(PRESERVABLE) + " ([]: none of them)",
        _read_preserve, default=PRESERVABLE, show=show_list)

    versions: VersionsConfig | None = setting(
        "keep what the mirror replaces or deletes in a versions area, with a retention policy; off unless given "
        "(versions: {} keeps everything for 30 days beside the target)",
        _read_versions, section=VersionsConfig, default=None, unset="(off)")

    @property
    def remote(self) -> RemoteUrl | None:
        return self.target if isinstance(self.target, RemoteUrl) else None

    @property
    def excludes(self) -> tuple[str, ...]:
        """Every exclude pattern in the order they apply: exclude's, then each exclude_from file's."""
        return self.exclude + tuple(p for f in self.exclude_from for p in f.patterns)

    @property
    def versions_area(self) -> str | None:
        """The versions area's path (on the target's host); None: versions are off."""
        if self.versions is None:
            return None
        if self.versions.path is not None:
            given = str(self.versions.path)
            return given if self.remote is not None else _real(given)
        target = self.remote.path if self.remote is not None else str(self.target)
        parent, _, name = target.rstrip("/").rpartition("/")
        return f"{parent or ''}/.{name or 'root'}{DEFAULT_VERSIONS_SUFFIX}"


@dataclass(frozen=True)
class SshOptions:
    """How the daemon reaches the hosts of remote targets (every key may be set per host)."""

    identity_file: Path | None = setting("the private key ssh logs in with; default: ssh's own (~/.ssh/id_*)",
                                         _read_file, default=None, unset="(ssh's default keys)")
    known_hosts: Path | None = setting(
        "the known_hosts file that holds each host's key; required for remote targets (no trust on first use)",
        _read_file, default=None)
    connections: int = setting("ssh connections (masters) per host; batches share them",
                               lambda r, n, k: r.typed(n, k, "", _as_connections), default=1)
    connect_timeout: float = duration(10.0, "how long a connection may take to be made")
    keepalive: float = duration(5.0, "how often a quiet connection is probed; three probes unanswered "
                                     "and the host is down")
    io_timeout: float = duration(60.0, "how long a transfer may go without any data before it is given up")
    retry_min: float = duration(1.0, "the first wait before reconnecting to a host that is down; it doubles")
    retry_max: float = duration(60.0, "the longest wait between reconnections")
    compress: bool = flag(False, "compress data on the wire (helps on slow links, costs CPU)")
    bwlimit: int | None = setting("bandwidth limit per transfer in KiB/s, optionally with K, M or G (e.g. 10M)",
                                  lambda r, n, k: r.typed(n, k, "", _as_bwlimit), default=None, unset="(none)",
                                  show=lambda v: f"{v} KiB/s")
    rsync_path: str = setting("the rsync program on the remote host", _read_text, default="rsync")
    options: tuple[str, ...] = setting(
        "extra ssh options as Name=value (ssh_config(5)); the ones the daemon sets itself are refused",
        lambda r, n, k: tuple(r.typed(item, f"{k}[{i}]", "", _as_ssh_option) for i, item in
                              enumerate(r.items(n, k, "a list of ssh options"))),
        default=(), show=show_list)


def _read_hosts(reader: _Reader, node: yaml.Node, key: str) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """host name → the SshOptions keys given for it (the others come from the ssh block)."""
    m = reader.mapping(node, key, None)
    return tuple((host, tuple(reader.values(SshOptions, vnode, _join(key, host))[0].items()))
                 for host, (_, vnode) in m.items())


@dataclass(frozen=True)
class SshConfig(SshOptions):
    hosts: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = setting(
        "per-host settings: a mapping of host name to any of the keys above", _read_hosts, default=(),
        show=lambda hosts: ", ".join(h for h, _ in hosts) or "(none)")

    def for_host(self, host: str) -> SshOptions:
        """The ssh block's settings with the host's own over them."""
        base = {f.name: getattr(self, f.name) for f in fields(SshOptions)}
        for name, given in self.hosts:
            if name == host:
                base.update(given)
        return SshOptions(**base)


@dataclass(frozen=True)
class LogConfig:
    level: str = choice(LOG_LEVELS, "info", "the lowest level logged: debug, info, warning or error")
    format: str = choice(LOG_FORMATS, "auto", "auto (console on a terminal, JSON otherwise), json or console")
    trace: tuple[str, ...] = globs("globs of paths whose every pipeline step is logged at level debug", one=True)


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = setting("host:port (or [v6-address]:port) of the Prometheus endpoint; port 0 picks a free one",
                          lambda r, n, k: r.typed(n, k, "", _as_listen),
                          required="missing: give host:port, e.g. 127.0.0.1:9108")

    @property
    def host(self) -> str:
        host = self.listen.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path
    workers: int = setting("size of the worker pool that copies files; default: the number of CPUs",
                           lambda r, n, k: r.typed(n, k, "a whole number", _as_workers),
                           default_factory=lambda: os.cpu_count() or 1, restart=True)
    rescan_interval: float = duration(3600.0, "how often every folder is compared with its target as a safety net "
                                              "(0: never)")
    stop_grace: float = duration(10.0, "how long copies in flight may finish on SIGTERM")
    log: LogConfig = section(LogConfig, "logging", default_factory=LogConfig)
    control_socket: Path | None = setting(
        "the UNIX socket `status` and `rescan` talk to", _read_socket, default=None,
        unset="(default: $RUNTIME_DIRECTORY/control.sock, else /run/foldermirror/control-HASH.sock)", restart=True)
    metrics: MetricsConfig | None = section(MetricsConfig, "the Prometheus endpoint, off unless given",
                                            default=None, unset="(off)", restart=True)
    ssh: SshConfig = section(SshConfig, "how remote targets (ssh://) are reached", default_factory=SshConfig)
    folders: tuple[FolderConfig, ...] = sections(
        FolderConfig, "the source/target pairs to mirror", what="folder pairs", limit=lambda: MAX_FOLDERS,
        check=_check_folders, required="missing: list at least one source/target pair")

    def needs_restart(self, new: Config) -> list[str]:
        """The keys `new` changes that a reload does not apply."""
        return [k for k, s in settings(Config).items() if s.restart and getattr(new, k) != getattr(self, k)]


# For code that needs a default without a config at hand.
DEFAULT_RESCAN: float = _default_of(Config, "rescan_interval")
DEFAULT_STOP_GRACE: float = _default_of(Config, "stop_grace")


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
    reader = _Reader(file, loader, Path(os.path.dirname(os.path.abspath(file))))
    values, nodes = reader.values(Config, root, "")
    config = Config(path=Path(os.path.abspath(file)), **values)
    _check_remote(reader, config, nodes)
    return config


def _check_remote(reader: _Reader, config: Config, nodes: _Nodes) -> None:
    """Each remote target's host needs its key in a known_hosts file: never trust on first use."""
    for i, f in enumerate(config.folders):
        remote = f.remote
        if remote is not None and config.ssh.for_host(remote.link.host).known_hosts is None:
            where = nodes["ssh"][1] if "ssh" in nodes else nodes["folders"][1].value[i]
            raise reader.error(where, "ssh.known_hosts",
                               f"missing: folders[{i}] mirrors to {remote}, and the host's key must be known "
                               f"beforehand (there is no trust on first use); give a known_hosts file holding it, "
                               f"e.g. from ssh-keyscan {remote.link.host} after checking its fingerprint")


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
    # realpath: a root given as a symlink gets no inotify events, so the watches must be put on
    # the folder it points to; and the overlap checks must compare real locations.
    path = Path(os.path.expanduser(raw))
    if not path.is_absolute():
        path = base / path
    return Path(os.path.realpath(path))


@functools.lru_cache(maxsize=1024)
def _real(path: str) -> str:
    return os.path.realpath(path)


def _inside(inner: Path | RemoteUrl, outer: Path | RemoteUrl) -> bool:
    """At or below: on one machine only (a remote target never overlaps a local folder)."""
    if isinstance(inner, RemoteUrl) or isinstance(outer, RemoteUrl):
        return isinstance(inner, RemoteUrl) and isinstance(outer, RemoteUrl) and inner.inside(outer)
    # On strings: both are real absolute paths, and every pair of folders is compared.
    i, o = str(inner), str(outer)
    return i == o or i.startswith(o.rstrip("/") + "/")


def _check_versions_area(reader: _Reader, f: FolderConfig, m: _Nodes, key: str, every: list[FolderConfig]) -> None:
    """The versions area is never in a mirror or a source, nor shared: it would be mirrored, compared or pruned twice."""
    area = f.versions_area
    if area is None:
        return
    vnode = m["versions"][1]
    where = vnode
    if isinstance(vnode, yaml.MappingNode):
        where = next((v for k, v in vnode.value if k.value == "path"), vnode)
    vkey = f"{key}.versions.path"
    for j, g in enumerate(every):
        for what, other in (("target", g.target), ("source", g.source)):
            if isinstance(other, RemoteUrl) != (f.remote is not None):
                continue
            if isinstance(other, RemoteUrl):
                assert f.remote is not None
                if other.link != f.remote.link:
                    continue
                other_path = other.path
            else:
                other_path = str(other)
            mine = "its" if g is f else f"folders[{j}]'s"
            if _inside(Path(area), Path(other_path)):
                raise reader.error(where, vkey, f"versions area {area} is inside {mine} {what} {other_path}: it "
                                   "must be outside every mirror and source (it would be mirrored or compared)")
            if _inside(Path(other_path), Path(area)):
                raise reader.error(where, vkey, f"versions area {area} contains {mine} {what} {other_path}")
        if g is not f and g.versions_area == area and (g.remote is None) == (f.remote is None):
            raise reader.error(where, vkey, f"versions area {area} is also folders[{j}]'s: each folder needs its own")


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
        _check_versions_area(reader, f, m, key, [g for g, _ in folders])
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
