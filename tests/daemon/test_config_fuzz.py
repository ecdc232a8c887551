"""Config fuzzer: hundreds of mutants of the shipped configs, none of which may crash anything.

Every mutant goes through `check` (exit 0 or 78, never a traceback, no YAML tag executed), and a
running daemon is reloaded with a few dozen of them and still mirrors afterwards. Seeded: set
FOLDERMIRROR_FUZZ_SEED to replay a run; a failure names the seed, the mutant's file and what
was done to it.
"""

from __future__ import annotations

import codecs
import os
import random
import re
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from foldermirror.cli import main
from foldermirror.config import load_config
from foldermirror.errors import ConfigError
from helpers import ENV, REPO, pair, wait_until, write_config

SEED = int(os.environ.get("FOLDERMIRROR_FUZZ_SEED", "20240611"))
MUTANTS = 400
SUBPROCESS_CHECKS = 10
RELOADS = 30
BASES = {name: (REPO / "config" / name).read_text(encoding="utf-8") for name in ("example.yaml", "demo.yaml")}

_PATH_LINE = re.compile(r"^(\s*(?:- )?(source|target):\s*)(\S+)(.*)$")
_VALUE_LINE = re.compile(r"^(\s*(?:- )?[A-Za-z_]+:[ \t]+)([^#\n]*?)(\s*(?:#.*)?)$")
_ITEM_LINE = re.compile(r"^(\s*- )([^#\n]*?)(\s*(?:#.*)?)$")
_KEY_LINE = re.compile(r"^(\s*(?:- )?)([A-Za-z_]+)(:.*)$")


class NothingToChange(Exception):
    pass


class Mutator:
    """Makes mutants of the shipped configs whose folders live under `root`."""

    def __init__(self, rng: random.Random, root: Path, pwned: Path) -> None:
        self.rng = rng
        self.root = root
        self.pwned = pwned
        self.count = 0
        root.mkdir(parents=True, exist_ok=True)
        self.bases = {name: self._relocate(text) for name, text in BASES.items()}
        payload = f'!!python/object/apply:os.system ["touch {pwned}"]'
        self.values = [
            "!keep.tmp", "*.tmp", "&a x", "*a", "!foo", "!", "&", "*", "%", "@", "`", "|", ">", "|\n  block",
            payload, f"[{payload}]", f"{{a: {payload}}}", f"!!python/object/new:os.system [\"touch {pwned}\"]",
            "!!python/name:os.system", "!!binary aGk=", "!!timestamp 2001-01-01", "!!set {a}", "!!omap [a: 1]",
            "!!str 5", "!!int x", "!!float x", "!!bool maybe", "!!null x", "!!map x", "!!seq x",
            "!<tag:yaml.org,2002:str> x", "!<!> x", ".nan", ".NaN", ".inf", "-.inf", "+.inf",
            "99999999999999999999999", "9" * 5000, "x" * 5000, "/" + "d" * 300, "'" + "q" * 5000 + "'",
            "~", "null", "[]", "{}", "[a, [b, [c]]]", "{a: 1}", "yes", "no", "on", "0x1F", "0o17", "0b101",
            "1_000", "1:30", "190:20:30.15", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "'quoted'",
            '"\\0"', '"\\ud800"', '"\\x01"', '"\\U0010ffff"', "-1", "0", "1e400", "1.0e400", "-0.0", "1.5",
            '"unterminated', "'", "[", "{", "]", "}", "? x", ": x", "- x", "<<: *a", "=", "a: b: c",
            "\"a\\\"b\"", "'it''s'", "#", "\t", "a\tb", "é", "日本", "\u2028", "\ufeff", "\x85",
            "1s", "250ms", "5m", "1h", "2d", "367d", "0.5", "1", "true", "false", "info", "json", "'*.bak'",
        ]
        self.keys = ["!foo name", "*a", "&a name", "? [a]", "k" * 5000, "k" * 1000, "<<", "=", "nmae", "Name",
                     "exclude ", "1", "true", "~", "'folders'", '"settle"', "!!str delete", "é"]
        self.inserts = ["\0", "\t", "\x01", "\x7f", "\r", "\r\n", "\u2028", "\ufeff", "\x85", "\ud800", "#", ":",
                        '"', "'", "[", "{", "%", "&", "*", "!", "|", ">", "- ", "\n", "\n---\n", "\n...\n", " "]

    def _relocate(self, text: str) -> str:
        """Point every source and target at folders under root; the sources exist."""
        out = []
        for line in text.splitlines(keepends=True):
            m = _PATH_LINE.match(line.rstrip("\n"))
            if m:
                self.count += 1
                path = self.root / f"{m.group(2)}-{self.count}"
                if m.group(2) == "source":
                    path.mkdir(exist_ok=True)
                line = f"{m.group(1)}{path}{m.group(4)}\n"
            out.append(line)
        return "".join(out)

    def mutant(self, ops: list[Callable[[Mutator, str], tuple[str, str]]] | None = None) -> tuple[bytes, list[str]]:
        """The bytes of one mutant and what was done to it: `ops`, or a few chosen at random."""
        rng = self.rng
        name = rng.choice(sorted(self.bases))
        text = self.bases[name]
        done = [f"base {name}"]
        if ops is not None:
            pass
        elif rng.random() < 0.3:
            ops = [Mutator.benign] * rng.randint(1, 3)
        else:
            ops = [rng.choice(self.hostile) for _ in range(rng.randint(1, 3))]
        for op in ops:
            try:
                text, what = op(self, text)
            except NothingToChange:
                what = f"{op.__name__}: nothing to change"
            done.append(what)
        data, how = self.encode(text)
        done.append(how)
        return data, done

    # -- mutations: each takes and returns the text, with a description ----------------------
    def _lines(self, text: str, pattern: re.Pattern[str]) -> tuple[list[str], list[int]]:
        lines = text.split("\n")
        return lines, [i for i, line in enumerate(lines) if pattern.match(line) and not line.lstrip().startswith("#")]

    def pick(self, at: list[int]) -> int:
        if not at:
            raise NothingToChange
        return self.rng.choice(at)

    def benign(self, text: str) -> tuple[str, str]:
        rng = self.rng
        choices = [
            ("settle", rng.choice(["1s", "100ms", "0", "2", "0.5"])), ("delete", rng.choice(["true", "false"])),
            ("durable", rng.choice(["true", "false"])), ("workers", str(rng.randint(1, 8))),
            ("level", rng.choice(["debug", "info", "warning", "error"])), ("create", "true"),
            ("max_delete_fraction", rng.choice(["0", "0.25", "1"])), ("name", f"n{rng.randint(0, 10**6)}"),
            ("rescan_interval", rng.choice(["0", "1h", "10m"])), ("stop_grace", rng.choice(["1s", "5s"])),
        ]
        key, value = rng.choice(choices)
        new, n = re.subn(rf"^(\s*(?:- )?{key}:[ ]+)[^#\n]*?(\s*(?:#.*)?)$", rf"\g<1>{value}\g<2>", text,
                         count=1, flags=re.M)
        if n == 0 or key == "name":
            return text, f"benign: {key} not changed"
        return new, f"benign: {key}: {value}"

    def set_value(self, text: str) -> tuple[str, str]:
        lines, at = self._lines(text, _VALUE_LINE)
        i = self.pick(at)
        m = _VALUE_LINE.match(lines[i])
        value = self.rng.choice(self.values)
        lines[i] = m.group(1) + value + m.group(3)
        return "\n".join(lines), f"line {i + 1}: value -> {value[:40]!r}"

    def set_item(self, text: str) -> tuple[str, str]:
        lines, at = self._lines(text, _ITEM_LINE)
        i = self.pick(at)
        m = _ITEM_LINE.match(lines[i])
        value = self.rng.choice(self.values)
        if self.rng.random() < 0.5:
            lines[i] = m.group(1) + value + m.group(3)
            return "\n".join(lines), f"line {i + 1}: list item -> {value[:40]!r}"
        lines.insert(i + 1, m.group(1) + value)
        return "\n".join(lines), f"line {i + 2}: list item {value[:40]!r} inserted"

    def set_key(self, text: str) -> tuple[str, str]:
        lines, at = self._lines(text, _KEY_LINE)
        i = self.pick(at)
        m = _KEY_LINE.match(lines[i])
        key = self.rng.choice(self.keys + [lines[at[(at.index(i) + 1) % len(at)]].strip(" -").split(":")[0]])
        lines[i] = m.group(1) + key + m.group(3)
        return "\n".join(lines), f"line {i + 1}: key {m.group(2)} -> {key[:40]!r}"

    def indent(self, text: str) -> tuple[str, str]:
        lines = text.split("\n")
        i = self.rng.randrange(len(lines))
        body = lines[i].lstrip(" ")
        how = self.rng.choice(["tab", "more", "less", "none"])
        width = len(lines[i]) - len(body)
        lines[i] = {"tab": "\t" + body, "more": " " * (width + self.rng.randint(1, 4)) + body,
                    "less": " " * max(0, width - self.rng.randint(1, 4)) + body, "none": body}[how]
        return "\n".join(lines), f"line {i + 1}: indentation {how}"

    def shuffle_lines(self, text: str) -> tuple[str, str]:
        lines = text.split("\n")
        i, j = self.rng.randrange(len(lines)), self.rng.randrange(len(lines))
        how = self.rng.choice(["duplicate", "delete", "swap"])
        if how == "duplicate":
            lines.insert(i, lines[i])
        elif how == "delete":
            del lines[i]
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines), f"line {i + 1}: {how}" + (f" with {j + 1}" if how == "swap" else "")

    def anchors(self, text: str) -> tuple[str, str]:
        how = self.rng.choice(["anchor+alias", "alias", "bomb", "merge"])
        if how == "bomb":
            laughs = "l0: &l0 lol\n" + "".join(
                f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
            return laughs + text, "billion laughs on top"
        lines, at = self._lines(text, _VALUE_LINE)
        i = self.pick(at)
        m = _VALUE_LINE.match(lines[i])
        if how == "anchor+alias":
            lines[i] = m.group(1) + "&v " + m.group(2) + m.group(3)
            j = self.pick(at)
            mj = _VALUE_LINE.match(lines[j])
            lines[j] = mj.group(1) + "*v" + mj.group(3)
        elif how == "alias":
            lines[i] = m.group(1) + "*nowhere" + m.group(3)
        else:
            lines.insert(i + 1, m.group(1).split(m.group(1).strip())[0] + "<<: {delete: true}")
        return "\n".join(lines), f"line {i + 1}: {how}"

    def tag(self, text: str, items_only: bool = False, tags: tuple[str, ...] = ()) -> tuple[str, str]:
        lines, at = self._lines(text, _ITEM_LINE if items_only or self.rng.random() < 0.5 else _VALUE_LINE)
        i = self.pick(at)
        m = (_VALUE_LINE.match(lines[i]) or _ITEM_LINE.match(lines[i]))
        tag = self.rng.choice(tags or ("!!python/object/apply:os.system", "!!python/object/new:os.system",
                                       "!!python/name:os.system", "!keep", "!!binary", "!!str", "!", "!!int", "!e!x"))
        lines[i] = m.group(1) + tag + " " + m.group(2) + m.group(3)
        return "\n".join(lines), f"line {i + 1}: tag {tag}"

    def tag_item(self, text: str) -> tuple[str, str]:
        """The crash this fuzzer was written for: a tag on a list item (exclude, or log.trace uncommented)."""
        if self.rng.random() < 0.5:
            text = text.replace('  # trace: ["report-*.pdf"]', '  trace:\n    - "report-*.pdf"\n    - other')
        return self.tag(text, items_only=True, tags=("!!python/object/apply:os.system", "!keep", "!!binary"))

    def documents(self, text: str) -> tuple[str, str]:
        how = self.rng.choice(["---", "...", "--- copy", "%YAML 1.1", "%TAG"])
        if how == "--- copy":
            return text + "\n---\n" + text, "a second document"
        if how == "%YAML 1.1":
            return "%YAML 1.1\n---\n" + text, "a YAML directive"
        if how == "%TAG":
            return "%TAG !e! tag:yaml.org,2002:python/\n---\nx: !e!object/apply:os.system ['true']\n" + text, "%TAG"
        return text + f"\n{how}\nworkers: 2\n", f"{how} then more"

    def truncate(self, text: str) -> tuple[str, str]:
        at = self.rng.randrange(len(text) + 1)
        return text[:at], f"truncated at {at}"

    def insert_chars(self, text: str) -> tuple[str, str]:
        at = self.rng.randrange(len(text) + 1)
        chars = self.rng.choice(self.inserts) * self.rng.choice([1, 1, 2, 5])
        return text[:at] + chars + text[at:], f"{chars!r} inserted at {at}"

    def uncomment(self, text: str) -> tuple[str, str]:
        lines = text.split("\n")
        at = [i for i, line in enumerate(lines) if re.match(r"^\s*#\s?\S", line)]
        i = self.pick(at)
        lines[i] = re.sub(r"^(\s*)#\s?", r"\1", lines[i])
        return "\n".join(lines), f"line {i + 1}: uncommented"

    hostile = [set_value, set_value, set_item, set_item, set_key, indent, shuffle_lines, anchors, tag, tag,
               documents, truncate, insert_chars, insert_chars, uncomment]

    def encode(self, text: str) -> tuple[bytes, str]:
        rng = self.rng
        how = rng.choice(["utf-8"] * 30 + ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "bom",
                                           "bom inside", "bytes", "cp1252"])
        if how == "bom":
            return codecs.BOM_UTF8 + text.encode("utf-8", "surrogatepass"), how
        if how == "bom inside":
            data = text.encode("utf-8", "surrogatepass")
            at = rng.randrange(len(data) + 1)
            return data[:at] + codecs.BOM_UTF8 + data[at:], f"{how} at byte {at}"
        if how == "bytes":
            data = bytearray(text.encode("utf-8", "surrogatepass"))
            for _ in range(rng.randint(1, 4)):
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
            return bytes(data), "random bytes inserted"
        if how in ("latin-1", "cp1252"):
            text = text.replace("name:", "name: café", 1)
        # A lone surrogate inserted above becomes bytes that are not UTF-8.
        return text.encode(how, "surrogatepass" if how.startswith("utf") else "replace"), how


def check_in_process(path: Path, capsys: pytest.CaptureFixture[str], context: str) -> int:
    try:
        rc = main(["check", "--config", str(path)])
    except BaseException:  # SystemExit and KeyboardInterrupt too: `check` must return
        out, err = capsys.readouterr()
        pytest.fail(f"{context}: check raised\n{traceback.format_exc()}\nstdout: {out[:2000]}\nstderr: {err[:2000]}")
    out, err = capsys.readouterr()
    assert rc in (0, 78), f"{context}: exit {rc}\n{err[:2000]}"
    assert "Traceback" not in out + err, f"{context}: a traceback\n{err[:4000]}"
    if rc == 78:
        assert err.startswith(f"foldermirror: error: {path}"), f"{context}: {err[:2000]}"
    else:
        assert out.startswith(f"config: {path}"), f"{context}: {out[:2000]}"
    return rc


def write_mutants(mutator: Mutator, folder: Path, count: int) -> list[tuple[Path, str]]:
    folder.mkdir(exist_ok=True)
    out = []
    for i in range(count):
        data, done = mutator.mutant()
        path = folder / f"mutant-{i:03d}.yaml"
        path.write_bytes(data)
        out.append((path, f"seed {SEED}, {path} ({'; '.join(done)})"))
    return out


@pytest.mark.timeout(60)
def test_no_mutant_crashes_check(tmp_path, capsys):
    pwned = tmp_path / "PWNED"
    mutator = Mutator(random.Random(SEED), tmp_path / "folders", pwned)
    mutants = write_mutants(mutator, tmp_path / "mutants", MUTANTS)
    codes = {path: check_in_process(path, capsys, context) for path, context in mutants}
    assert not pwned.exists(), f"seed {SEED}: a YAML tag ran a command"
    valid = [p for p, rc in codes.items() if rc == 0]
    # Enough of them get past YAML into the checks of paths and values, and enough are refused.
    assert len(valid) >= MUTANTS // 10, f"seed {SEED}: only {len(valid)} of {MUTANTS} mutants are valid"
    assert len(codes) - len(valid) >= MUTANTS // 2, f"seed {SEED}: only {len(codes) - len(valid)} refused"

    # The same verdict from a real process, for some of each kind.
    rng = random.Random(SEED)
    refused = [p for p, rc in codes.items() if rc == 78]
    sample = rng.sample(valid, SUBPROCESS_CHECKS // 2) + rng.sample(refused, SUBPROCESS_CHECKS // 2)
    for path in sample:
        r = subprocess.run([sys.executable, "-m", "foldermirror", "check", "--config", str(path)],
                           capture_output=True, text=True, errors="replace", env=ENV, timeout=30,
                           stdin=subprocess.DEVNULL)
        context = dict(mutants)[path]
        assert r.returncode == codes[path], f"{context}: exit {r.returncode} in a process\n{r.stderr[:2000]}"
        assert "Traceback" not in r.stdout + r.stderr, f"{context}: a traceback\n{r.stderr[:4000]}"
    assert not pwned.exists(), f"seed {SEED}: a YAML tag ran a command"


@pytest.mark.timeout(90)
def test_a_daemon_reloading_mutants_keeps_running_and_mirroring(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path)
    cfg = write_config(tmp_path, [spec])
    good = cfg.read_bytes()
    pwned = tmp_path / "PWNED"
    mutator = Mutator(random.Random(SEED + 1), tmp_path / "folders", pwned)
    d = daemon_factory(cfg)
    d.wait_ready()

    def outcomes() -> list[dict]:
        return [r for r in list(d.records) if r.get("event") in ("config_invalid", "config_reloaded")]

    def reload(context: str, count: int) -> dict:
        d.send(signal.SIGHUP)

        def done() -> dict | None:
            assert d.proc.poll() is None, f"{context}: the daemon exited ({d.proc.returncode}):\n{d.tail()}"
            got = outcomes()
            return got[-1] if len(got) >= count else None
        return wait_until(done, 15, lambda: f"{context}: no config_reloaded or config_invalid:\n{d.tail()}")

    for i in range(RELOADS):
        data, done = mutator.mutant([Mutator.tag_item] if i % 5 == 0 else None)
        cfg.write_bytes(data)
        context = f"seed {SEED + 1}, reload {i} ({'; '.join(done)})"
        try:
            load_config(cfg)
            expected = "config_reloaded"
        except ConfigError:
            expected = "config_invalid"
        record = reload(context, i + 1)
        assert record["event"] == expected, f"{context}: {record}"
        if expected == "config_invalid":
            assert "Traceback" not in record["error"] and record["error"].startswith(str(cfg)), record
    assert not pwned.exists(), f"seed {SEED + 1}: a YAML tag ran a command"
    assert any(r["event"] == "config_invalid" for r in outcomes()), "no mutant was invalid"

    cfg.write_bytes(good)
    assert reload("the good config back", RELOADS + 1)["event"] == "config_reloaded"
    (src / "after-fuzz.txt").write_text("still mirroring")
    wait_until(lambda: (dst / "after-fuzz.txt").exists() and (dst / "after-fuzz.txt").read_text() == "still mirroring",
               30, lambda: f"not mirrored after the reloads:\n{d.tail()}")
    assert d.proc.poll() is None
