"""Install and packaging, as processes: the README's first command run literally in a fresh copy
of the checkout, the wheel built and installed in a venv (no checkout), the generated man page
rendered and the bash completion completing, and fault injection refused under systemd.

The venv tests install offline from a wheelhouse (the dependencies and the build backend),
downloaded from PyPI into pytest's cache once per session; a session without network uses
what is cached, and with neither the tests skip saying so. In-process parts of the same
(every option in the generated texts, install-units under a root) are in unit/test_packaging.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from foldermirror import __version__, docgen, shipped
from foldermirror.cli import build_parser
from helpers import ENV, REPO, fm, pair, wait_until, write_config

VENV_TIMEOUT = 300  # a venv, a build and an install: 10-20 s here, more on a loaded machine


def python3() -> str:
    """The `python3` the README's commands run (the first on PATH)."""
    found = shutil.which("python3")
    if found is None:
        pytest.skip("no python3 on PATH")
    probe = subprocess.run([found, "-c", "import ensurepip, venv"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{found} has no venv/ensurepip module (on Debian: apt-get install python3-venv): "
                    f"{probe.stderr.strip().splitlines()[-1:]}")
    return found


def offline_env(wheelhouse: Path) -> dict[str, str]:
    """A process environment that sees no checkout (no PYTHONPATH) and installs from the wheelhouse only."""
    env = {k: v for k, v in ENV.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PIP_")}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1")
    return env


@pytest.fixture(scope="session")
def wheelhouse(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of the build backend and every dependency, for the python3 on PATH, in a cache kept
    across sessions: refreshed from PyPI once per session, or used as is when PyPI cannot be reached."""
    cache_provider = getattr(request.config, "cache", None)
    cache = (Path(cache_provider.mkdir("wheelhouse")) if cache_provider is not None
             else tmp_path_factory.mktemp("wheelhouse"))
    target = subprocess.run([python3(), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    download = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
                "--python-version", target, "--dest", str(cache), *wanted]
    online = subprocess.run(download, capture_output=True, text=True, timeout=240, env=ENV)
    if online.returncode != 0:
        cached = subprocess.run([*download, "--no-index", "--find-links", str(cache)], capture_output=True,
                                text=True, timeout=120, env=ENV)
        if cached.returncode != 0:
            def last(r: subprocess.CompletedProcess[str]) -> str:
                return (r.stderr.strip().splitlines() or ["?"])[-1]
            pytest.skip(f"no wheelhouse for Python {target}: PyPI cannot be reached ({last(online)}) and the "
                        f"cache {cache} lacks some of {wanted} ({last(cached)}); run once with network")
    return cache


def copy_checkout(dest: Path) -> Path:
    """A fresh copy of this checkout's files as they are now (tracked and new ones; nothing ignored)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True)
    if listed.returncode == 0:
        for rel in filter(None, listed.stdout.decode().split("\0")):
            src = REPO / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:  # not a git checkout (an unpacked sdist)
        shutil.copytree(REPO, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "share"))
    return dest


def readme_first_command() -> str:
    """The first ```sh block of README.md, which must be one command."""
    block = re.search(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md has no ```sh block"
    lines = [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) == 1, lines
    return lines[0]


class Lines:
    """A process's stderr and stdout lines, collected by threads, to wait on."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._streams = (proc.stdout, proc.stderr)
        self._threads = [threading.Thread(target=self._read, args=(s,), daemon=True) for s in self._streams]
        for t in self._threads:
            t.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def events(self, name: str) -> list[dict[str, Any]]:
        import json

        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            if line.startswith("{") and f'"{name}"' in line:
                record = json.loads(line)
                if record.get("event") == name:
                    out.append(record)
        return out

    def tail(self, n: int = 30) -> str:
        with self._lock:
            return "\n".join(self.lines[-n:])

    def join(self) -> None:
        """Once the process is gone: the last lines read, the pipes closed."""
        for t, stream in zip(self._threads, self._streams, strict=True):
            t.join(10)
            if not t.is_alive() and stream is not None:
                stream.close()


# -- the README's first command ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(VENV_TIMEOUT)
def test_the_readmes_first_command_installs_and_starts_the_demo(tmp_path, wheelhouse):
    command = readme_first_command()
    assert "python3 -m venv" in command and "config/demo.yaml" in command, command
    python3()  # skips where python3 cannot make a venv
    checkout = copy_checkout(tmp_path / "checkout")
    proc = subprocess.Popen(["sh", "-c", command], cwd=checkout, env=offline_env(wheelhouse), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = Lines(proc)
    t0 = time.monotonic()
    try:
        wait_until(lambda: out.events("daemon_ready") or proc.poll() is not None, VENV_TIMEOUT - 30,
                   lambda: f"no daemon_ready:\n{out.tail()}")
        assert proc.poll() is None, f"exited {proc.returncode}:\n{out.tail()}"
        print(f"venv, install and start: {time.monotonic() - t0:.1f} s")
        started, = out.events("daemon_started")
        assert started["config"] == str(checkout / "config/demo.yaml"), started
        # The demo works: a file dropped into its source is mirrored into its copy.
        (checkout / "config/demo/source/hello.txt").write_text("hello\n")
        wait_until(lambda: out.events("file_mirrored"), 30, lambda: out.tail())
        assert (checkout / "config/demo/copy/hello.txt").read_text() == "hello\n"
        # The daemon is the venv's, installed from the copy (not this checkout's daemon/).
        argv = Path(f"/proc/{started['pid']}/cmdline").read_bytes().split(b"\0")
        assert argv[:2] == [str(checkout / ".venv/bin/python3").encode(), b".venv/bin/foldermirror"], argv
        os.kill(started["pid"], signal.SIGINT)  # Ctrl-C, as the README says
        assert proc.wait(60) == 0, out.tail()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.join()
    assert out.events("daemon_stopped"), out.tail()


# -- the wheel ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    """`pip wheel . --no-deps` of a fresh copy of the checkout (a build leaves build/ behind)."""
    work = tmp_path_factory.mktemp("wheel")
    source = copy_checkout(work / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(source)],
                       capture_output=True, text=True, env=offline_env(wheelhouse), timeout=VENV_TIMEOUT)
    assert r.returncode == 0, r.stderr
    wheel, = (work / "dist").glob("foldermirror-*.whl")
    return wheel


@pytest.mark.slow
@pytest.mark.timeout(VENV_TIMEOUT)
def test_the_wheel_carries_the_units_config_readme_and_license(built_wheel):
    assert built_wheel.name == f"foldermirror-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(built_wheel) as z:
        names = set(z.namelist())
        for relpath in shipped.SOURCES.values():
            data = f"foldermirror-{__version__}.data/data/share/foldermirror/{relpath}"
            assert data in names, (relpath, sorted(names))
            assert z.read(data) == (REPO / relpath).read_bytes(), relpath
        info = f"foldermirror-{__version__}.dist-info"
        assert f"{info}/licenses/LICENSE" in names, sorted(names)
        metadata = z.read(f"{info}/METADATA").decode()
    headers = metadata.split("\n\n", 1)[0].splitlines()
    for line in (f"Version: {__version__}", "License-Expression: MIT", "License-File: LICENSE",
                 "Requires-Python: >=3.11", "Classifier: Operating System :: POSIX :: Linux"):
        assert line in headers, (line, headers)
    assert any(h.startswith("Project-URL: Source, https://") for h in headers), headers
    assert not [n for n in names if n.startswith(("tests/", "config/", "systemd/"))], sorted(names)


@pytest.mark.slow
@pytest.mark.timeout(VENV_TIMEOUT)
def test_the_installed_wheel_hands_out_its_files_without_a_checkout(tmp_path, built_wheel, wheelhouse):
    env = offline_env(wheelhouse)
    subprocess.run([python3(), "-m", "venv", str(tmp_path / "venv")], check=True, env=env, timeout=120)
    r = subprocess.run([str(tmp_path / "venv/bin/pip"), "install", "-q", str(built_wheel)], capture_output=True,
                       text=True, env=env, timeout=VENV_TIMEOUT)
    assert r.returncode == 0, r.stderr
    elsewhere = tmp_path / "elsewhere"  # not the checkout, and no PYTHONPATH: only what was installed
    elsewhere.mkdir()

    def installed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(tmp_path / "venv/bin/foldermirror"), *args], capture_output=True, text=True,
                              cwd=elsewhere, env=env, timeout=60)

    listing = installed("files")
    assert listing.returncode == 0, listing.stderr
    for name, relpath in shipped.SOURCES.items():
        assert re.search(rf"^{re.escape(name)} +{re.escape(str(tmp_path))}/venv/share/foldermirror/"
                         rf"{re.escape(relpath)}$", listing.stdout, re.M), listing.stdout
    assert "→ /etc/foldermirror/config.yaml (only if absent)" in listing.stdout
    example = installed("files", "example.yaml")
    assert example.returncode == 0 and example.stdout == (REPO / "config/example.yaml").read_text()

    root = tmp_path / "root"
    done = installed("install-units", "--root", str(root), "--remote-targets")
    assert done.returncode == 0, done.stderr
    for p in shipped.PLACEMENTS:
        dest = root / p.dest.lstrip("/")
        assert dest.read_bytes() == (REPO / shipped.SOURCES[p.name]).read_bytes(), p
        assert f"installed {dest}" in done.stdout.splitlines()
    assert "/opt/foldermirror/bin/foldermirror, which is missing" in done.stderr

    man = installed("man")
    assert man.returncode == 0 and man.stdout.startswith(".TH FOLDERMIRROR 1"), man.stderr
    bash = installed("completion", "bash")
    assert bash.returncode == 0 and "complete -F _foldermirror foldermirror" in bash.stdout, bash.stderr


# -- generated from the parser, run by their readers -------------------------------------------

def test_files_reads_the_checkouts_copies_in_place():
    r = fm("files", "foldermirror.service")
    assert r.returncode == 0 and r.stdout == (REPO / "systemd/foldermirror.service").read_text(), r.stderr
    r = fm("files", "nonesuch")
    assert r.returncode == 2 and "invalid choice" in r.stderr


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    r = fm("completion", "bash")
    assert r.returncode == 0, r.stderr
    path = tmp_path_factory.mktemp("completion") / "foldermirror.bash"
    path.write_text(r.stdout)
    return path


def complete(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for the command line `words` (the last one being completed)."""
    program = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _foldermirror; '
               'printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", program, "bash", str(script), "foldermirror", *words],
                       capture_output=True, text=True, cwd=cwd, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return [line for line in r.stdout.splitlines() if line]


def test_bash_completes_commands_options_choices_and_files(bash_script, tmp_path):
    cmds = docgen.commands(build_parser())
    assert complete(bash_script, "") == [c.name for c in cmds]
    assert complete(bash_script, "r") == [c.name for c in cmds if c.name.startswith("r")] == ["run", "rescan", "restore"]
    assert complete(bash_script, "--") == ["--help", "--version"]
    for c in cmds:  # every option of every command, after its command
        offered = complete(bash_script, c.name, "-")
        assert offered == [f for o in c.options for f in o.flags], c.name
    assert complete(bash_script, "run", "--log-") == ["--log-format", "--log-level"]
    assert complete(bash_script, "run", "--log-level", "") == ["debug", "info", "warning", "error"]
    assert complete(bash_script, "run", "-c", "/etc/foldermirror/x", "--log-format", "j") == ["json"]
    assert complete(bash_script, "files", "") == list(shipped.SOURCES)
    assert complete(bash_script, "completion", "") == ["bash", "zsh"]
    assert complete(bash_script, "rescan", "--folder", "") == []
    (tmp_path / "conf.yaml").touch()
    (tmp_path / "conf.d").mkdir()
    assert sorted(complete(bash_script, "check", "--config", "con", cwd=tmp_path)) == ["conf.d", "conf.yaml"]
    assert complete(bash_script, "install-units", "--root", "con", cwd=tmp_path) == ["conf.d"]
    registered = subprocess.run(["bash", "--norc", "-c", 'source "$1"; complete -p foldermirror', "bash",
                                 str(bash_script)], capture_output=True, text=True, timeout=30)
    assert registered.stdout.strip() == "complete -F _foldermirror foldermirror", registered


# What zsh's completion offers for a command line, from a real interactive zsh in a pty (zpty):
# compadd is wrapped to print each match it adds, and a post-completion hook ends that zsh.
# "MA""TCH:" keeps the marker out of the pty's echo of the input.
ZSH_CAPTURE = r"""
zmodload zsh/zpty || exit 3
local dir=$1 dump=$2; shift 2
zpty z zsh -f -i
zpty -w z "PROMPT=; fpath=(${(q)dir} \$fpath); autoload -Uz compinit; compinit -u -d ${(q)dump}"
zpty -w z 'compadd() { if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
  local -a __hits; builtin compadd -A __hits "$@"; (( $#__hits )) && print -rl -- "MA""TCH:"${^__hits}
  builtin compadd "$@"; }'
zpty -w z 'zstyle ":completion:*" insert-tab false; bindkey "^I" complete-word'
zpty -w z '__done() { print -r -- "END""-OF-COMPLETION"; exit 0; }; comppostfuncs=(__done)'
zpty -w z "$*"$'\t'
local line
while zpty -r z line; do
  [[ $line == *MATCH:* ]] && print -r -- ${${line##*MATCH:}//[$'\r\n']/}
  [[ $line == *END-OF-COMPLETION* ]] && break
done
zpty -d z
"""


def test_zsh_completes_from_the_script_in_fpath(tmp_path):
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed (apt-get install zsh)")
    r = fm("completion", "zsh")
    assert r.returncode == 0, r.stderr
    fpath = tmp_path / "fpath"
    fpath.mkdir()
    (fpath / "_foldermirror").write_text(r.stdout)
    (tmp_path / "capture.zsh").write_text(ZSH_CAPTURE)
    syntax = subprocess.run(["zsh", "-n", str(fpath / "_foldermirror")], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    work = tmp_path / "work"
    work.mkdir()
    (work / "conf.yaml").touch()
    (work / "conf.d").mkdir()
    env = {**ENV, "HOME": str(tmp_path)}

    def offered(*words: str) -> list[str]:
        got = subprocess.run(["zsh", "-f", str(tmp_path / "capture.zsh"), str(fpath), str(tmp_path / "dump"),
                              "foldermirror", *words], capture_output=True, text=True, timeout=60, cwd=work, env=env)
        assert got.returncode == 0, got
        return list(dict.fromkeys(got.stdout.split()))

    sourced = subprocess.run(["zsh", "-f", "-c", f"autoload -Uz compinit; compinit -u -d {tmp_path}/dump2; "
                              f"source {fpath}/_foldermirror; print -r -- $_comps[foldermirror]"],
                             capture_output=True, text=True, timeout=60, env=env)
    assert sourced.stdout.strip() == "_foldermirror" and sourced.stderr == "", sourced  # sourced, not in $fpath
    cmds = docgen.commands(build_parser())
    assert offered("''") == [c.name for c in cmds]
    assert offered("run", "--log-level", "''") == ["debug", "info", "warning", "error"]
    assert offered("run", "-c", "/etc/x", "--log-format", "j") == ["json"]
    for c in cmds:  # every option of every command, after its command (zsh sorts them)
        assert sorted(offered(c.name, "-")) == sorted(f for o in c.options for f in o.flags), c.name
    assert offered("files", "''") == list(shipped.SOURCES)
    assert offered("completion", "''") == ["bash", "zsh"]
    assert sorted(offered("check", "--config", "con")) == ["conf.d", "conf.yaml"]
    assert offered("install-units", "--root", "con") == ["conf.d"]


def test_the_man_page_renders_without_warnings_and_names_every_command(tmp_path):
    r = fm("man")
    assert r.returncode == 0, r.stderr
    page = tmp_path / "foldermirror.1"
    page.write_text(r.stdout)
    if shutil.which("groff") is None and shutil.which("man") is None:
        pytest.skip("neither groff nor man is installed: the roff structure is checked in unit/test_packaging.py")
    if shutil.which("groff"):
        text = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-rLL=200n", str(page)], capture_output=True,
                              text=True, timeout=60)
        assert text.returncode == 0 and text.stderr == "", text.stderr
    else:
        text = subprocess.run(["man", "-l", "-P", "cat", str(page)], capture_output=True, text=True, timeout=60,
                              env={**ENV, "MANWIDTH": "200"})
        assert text.returncode == 0, text.stderr
    plain = re.sub(r".\x08", "", text.stdout)  # no overstrike bold
    assert re.search(r"^FOLDERMIRROR\(1\)", plain, re.M), plain[:200]
    for c in docgen.commands(build_parser()):
        assert re.search(rf"^ +foldermirror {re.escape(c.name)}\b", plain, re.M), c.name   # synopsis
        assert re.search(rf"^ +{re.escape(c.name)}$", plain, re.M), c.name                 # its section
    for name in docgen.names(build_parser()):
        assert name in plain, name
    if shutil.which("lexgrog"):  # what mandb reads for whatis and apropos
        whatis = subprocess.run(["lexgrog", str(page)], capture_output=True, text=True, timeout=60)
        assert whatis.returncode == 0 and '"foldermirror - Keep live mirrors' in whatis.stdout, whatis


# -- fault injection stays out of installed services -------------------------------------------

def test_faults_are_announced_and_refused_under_systemd(tmp_path, daemon_factory):
    src, dst, spec = pair(tmp_path, delete=True)
    for i in range(11):
        (src / f"d{i}").mkdir()
    cfg = write_config(tmp_path, [spec], rescan_interval=0)
    invocation = {"INVOCATION_ID": "0" * 32}
    asked = {"FOLDERMIRROR_FAULTS": "max_user_watches:5"}

    under_systemd = daemon_factory(cfg, env={**asked, **invocation})
    under_systemd.wait_for("sync_finished", reason="startup")  # the watch limit was looked at before
    refused, = under_systemd.events("faults_refused")
    assert refused["level"] == "error" and refused["value"] == "max_user_watches:5", refused
    assert "FOLDERMIRROR_FAULTS_UNDER_SYSTEMD=1" in refused["fix"], refused
    assert not under_systemd.events("faults_enabled") and not under_systemd.events("inotify_limit_low")
    assert under_systemd.stop() == 0

    meant = daemon_factory(cfg, env={**asked, **invocation, "FOLDERMIRROR_FAULTS_UNDER_SYSTEMD": "1"})
    enabled, = meant.wait_for("faults_enabled")
    assert enabled["level"] == "warning" and enabled["faults"] == ["max_user_watches:5"] and enabled["fix"], enabled
    meant.wait_for("inotify_limit_low")  # the fault is active
    meant.wait_ready()
    assert not meant.events("faults_refused")
    assert meant.stop() == 0
