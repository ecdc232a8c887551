"""The files the package carries beside its code, and the commands that hand them out.

The systemd units, their remote-targets drop-in, the annotated example config and README.md
(which the units' Documentation= names) have one copy in git, at the top of the repository
(`systemd/`, `config/`, `README.md`). The wheel carries them as data files, installed
under `{prefix}/share/foldermirror/PATH` (pyproject.toml, [tool.setuptools.data-files]); a
checkout (an editable install, or PYTHONPATH=daemon) reads them in place. So a pip or pipx
user with no checkout can still

  foldermirror files                  list them, with where `install-units` puts each
  foldermirror files NAME             print one (e.g. `files example.yaml > config.yaml`)
  foldermirror install-units [--root DIR] [--remote-targets]
                                      install them at the paths README's "Run as a service" uses
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from foldermirror.errors import EXIT_OK, FoldermirrorError

# name → path in the repository, and under share/foldermirror/ where the wheel installed it.
SOURCES = {
    "foldermirror.service": "systemd/foldermirror.service",
    "foldermirror@.service": "systemd/foldermirror@.service",
    "remote-targets.conf": "systemd/remote-targets.conf",
    "example.yaml": "config/example.yaml",
    "README.md": "README.md",
}

UNIT_DIR = "/etc/systemd/system"


@dataclass(frozen=True)
class Placement:
    """Where `install-units` puts one of SOURCES: the path README's "Run as a service" uses."""

    name: str
    dest: str
    replace: bool = True       # False: an existing file is the operator's (edited) and is kept
    remote: bool = False       # only with --remote-targets


PLACEMENTS = (
    Placement("foldermirror.service", f"{UNIT_DIR}/foldermirror.service"),
    Placement("foldermirror@.service", f"{UNIT_DIR}/foldermirror@.service"),
    Placement("example.yaml", "/etc/foldermirror/config.yaml", replace=False),
    Placement("README.md", "/opt/foldermirror/README.md"),       # the units' Documentation=
    Placement("remote-targets.conf", f"{UNIT_DIR}/foldermirror.service.d/remote-targets.conf",
              replace=False, remote=True),
    Placement("remote-targets.conf", f"{UNIT_DIR}/foldermirror@.service.d/remote-targets.conf",
              replace=False, remote=True),
)


class NotShipped(FoldermirrorError):
    """Neither a wheel's share/ folder nor a checkout holds the files (a broken install)."""


def base() -> Path:
    """The folder SOURCES' paths are relative to: the checkout this package runs from, else
    where the installed wheel put its data files (found through its RECORD, so a venv, a
    `pip install --user` and pipx all work)."""
    checkout = Path(__file__).resolve().parent.parent.parent   # daemon/foldermirror → the repository
    if (checkout / "pyproject.toml").is_file() and (checkout / SOURCES["foldermirror.service"]).is_file():
        return checkout
    from importlib import metadata  # here: it imports the email package, which no daemon needs

    marker = f"share/foldermirror/{SOURCES['foldermirror.service']}"
    try:
        dist = metadata.distribution("foldermirror")
        for f in dist.files or ():
            if f.as_posix().endswith(marker):
                # share/foldermirror/systemd/foldermirror.service → share/foldermirror
                return Path(str(dist.locate_file(f))).resolve().parent.parent
    except metadata.PackageNotFoundError:
        pass
    raise NotShipped(f"the shipped files are missing: no {marker} among the installed package's files and no "
                     f"checkout at {checkout}; reinstall foldermirror")


def path(name: str) -> Path:
    return base() / SOURCES[name]


def list_files(out: TextIO) -> None:
    """Each file's name and where it is now, then where `install-units` puts it."""
    width = max(len(name) for name in SOURCES)
    for name in SOURCES:
        print(f"{name:<{width}}  {path(name)}", file=out)
        for p in PLACEMENTS:
            if p.name == name:
                notes = "; ".join(n for n, on in (("with --remote-targets", p.remote),
                                                  ("only if absent", not p.replace)) if on)
                print(f"{'':<{width}}  → {p.dest}" + (f" ({notes})" if notes else ""), file=out)


def install(root: Path, remote_targets: bool, out: TextIO, err: TextIO) -> int:
    """Write the placements under `root`: units and README replaced when they differ, the
    config and the drop-ins only when absent. One line per file. Returns the exit code."""
    for p in PLACEMENTS:
        if p.remote and not remote_targets:
            continue
        dest = root / p.dest.lstrip("/")
        data = path(p.name).read_bytes()
        if os.path.lexists(dest):
            if not p.replace:
                print(f"kept {dest} (it exists; `foldermirror files {p.name}` prints the shipped one)", file=out)
                continue
            if dest.is_file() and not dest.is_symlink() and dest.read_bytes() == data:
                print(f"unchanged {dest}", file=out)
                continue
        try:
            _write(dest, data, p.replace)
        except OSError as exc:
            hint = "; run it as root (sudo)" if isinstance(exc, PermissionError) and os.geteuid() != 0 else ""
            raise FoldermirrorError(f"cannot install {dest}: {exc.strerror or exc}{hint}") from exc
        print(f"installed {dest}", file=out)
    executable = _exec_start(path("foldermirror.service").read_text())
    if executable and not os.path.exists(root / executable.lstrip("/")):
        print(f"foldermirror: warning: the units run {executable}, which is missing under {root}: install "
              f"foldermirror into a venv at {os.path.dirname(os.path.dirname(executable))} (README, \"Run as a "
              f"service\"), or set ExecStart= in a drop-in; this one is {sys.prefix}", file=err)
    print("next: edit /etc/foldermirror/config.yaml, create the foldermirror user and the targets drop-in "
          "(README, \"Run as a service\"), then systemctl daemon-reload", file=out)
    return EXIT_OK


def _exec_start(unit: str) -> str | None:
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            return line.partition("=")[2].split()[0]
    return None


def _write(dest: Path, data: bytes, replace: bool) -> None:
    """Whole or not at all (temp file, then rename), mode 0644; without `replace`, never over a
    file that appeared meanwhile (link(2) fails on an existing name)."""
    missing = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    for folder in reversed(missing):  # 0755 whatever the umask: the service user reads the config
        folder.mkdir()
        folder.chmod(0o755)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)
        if replace:
            os.replace(tmp, dest)
        else:
            os.link(tmp, dest)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


# -- the subcommands (cli.build_parser adds them) --------------------------------------------
def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    files = sub.add_parser(
        "files", help="list or print the systemd units, example config and README carried by the package",
        description="Without NAME, list the files the package carries (the systemd units, the remote-targets "
                    "drop-in, the annotated example config, README.md) with where install-units puts each and "
                    "where each is now. With NAME, print that file, e.g. `foldermirror files example.yaml > "
                    "config.yaml`. Needs no config and no checkout.")
    files.add_argument("name", nargs="?", choices=tuple(SOURCES), metavar="NAME",
                       help=f"the file to print: {', '.join(SOURCES)}")
    files.set_defaults(handler=_files_command)
    units = sub.add_parser(
        "install-units", help="install the systemd units, example config and README at the paths README uses",
        description="Install the files the package carries where README's \"Run as a service\" puts them: "
                    f"the units in {UNIT_DIR}/ and README.md in /opt/foldermirror/ (replaced when they differ), "
                    "the example config as /etc/foldermirror/config.yaml only when that file is absent, and with "
                    "--remote-targets the remote-targets drop-in for both units (only where absent). Prints one "
                    "line per file. Run it as root; then edit the config and run systemctl daemon-reload.")
    units.add_argument("--root", metavar="DIR", default="/",
                       help="install under this folder instead of / (a staging tree or an image); default: /")
    units.add_argument("--remote-targets", action="store_true",
                       help="also install systemd/remote-targets.conf as a drop-in of both units (for ssh:// targets)")
    units.set_defaults(handler=_install_command)


def _files_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.name is None:
        list_files(sys.stdout)
    else:
        sys.stdout.buffer.write(path(args.name).read_bytes())
        sys.stdout.flush()
    return EXIT_OK


def _install_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return install(Path(args.root), args.remote_targets, sys.stdout, sys.stderr)
