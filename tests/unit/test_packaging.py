"""What the package carries and generates, in-process: the man page and completions walk the
parser (so nothing it declares can be missing), the shipped files, install-units under a root
folder, and the rule that keeps fault injection out of a service systemd runs.

The same run as processes (bash completing, groff rendering, a built wheel installed in a
venv, the README's first command) is in daemon/test_packaging.py.
"""

from __future__ import annotations

import io
import os
import re
import tomllib
from pathlib import Path

import pytest

from foldermirror import docgen, faults, shipped
from foldermirror.cli import build_parser
from helpers import REPO


def parser_names() -> list[str]:
    names = list(docgen.names(build_parser()))
    assert {"run", "check", "sync", "status", "rescan", "files", "install-units", "man", "completion",
            "--config", "-c", "--version", "--json", "--folder", "--root"} <= set(names), names
    return names


# -- generated from the parser ------------------------------------------------------------

def test_every_command_and_option_is_in_the_man_page_and_both_completions():
    parser = build_parser()
    man = docgen.man_page(parser)
    bash = docgen.bash_completion(parser)
    zsh = docgen.zsh_completion(parser)
    for name in parser_names():
        assert name.replace("-", "\\-") in man, name
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", bash), name
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", zsh), name
    for c in docgen.commands(parser):
        assert f".SS {c.name.replace('-', chr(92) + '-')}\n" in man, c.name
        assert f"\n.B foldermirror {c.name.replace('-', chr(92) + '-')}\n" in man, c.name


def test_every_option_of_every_command_is_described_by_the_parser():
    # Options added to the parser later (by anyone) are found the same way: through argparse's
    # own tables, so a help text missing there is missing in the man page too.
    for c in docgen.commands(build_parser()):
        assert c.summary and c.description, c
        for o in c.options:
            assert o.help, (c.name, o.flags)


def test_the_man_page_has_the_sections_man_expects():
    man = docgen.man_page(build_parser())
    assert man.startswith('.TH FOLDERMIRROR 1 "" "foldermirror ')
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT", "FILES",
                    "EXIT STATUS", "SEE ALSO"):
        assert f"\n.SH {section}\n" in man, section
    name_line = man.split("\n.SH NAME\n", 1)[1].splitlines()[0]
    assert name_line.startswith("foldermirror \\- "), name_line  # what whatis/apropos read
    assert not re.search(r"^[.'](?!TH|SH|SS|TP|B |BR |I |br|\\)", man, re.M), "a text line would be a request"
    for code in ("0", "1", "3", "78"):
        assert f"\n.B {code}\n" in man


def test_choices_and_paths_complete_as_such():
    bash = docgen.bash_completion(build_parser())
    assert "--log-level) _foldermirror_words 'debug info warning error'" in bash
    assert "--config|-c) _foldermirror_paths -f" in bash
    assert "--root) _foldermirror_paths -d" in bash
    assert "words='bash zsh'" in bash
    assert bash.rstrip().endswith("complete -F _foldermirror foldermirror")
    zsh = docgen.zsh_completion(build_parser())
    assert zsh.startswith("#compdef foldermirror\n")
    assert "'(--config -c)'{--config,-c}'[the YAML config file]:FILE:_files'" in zsh
    assert "'1:SHELL:(bash zsh)'" in zsh


# -- the shipped files ----------------------------------------------------------------------

def test_the_wheel_data_files_are_exactly_the_files_shipped_py_names():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    files = {f"{folder.removeprefix('share/foldermirror').lstrip('/')}/{Path(f).name}".lstrip("/"): f
             for folder, listed in declared.items() for f in listed}
    assert files == {relpath: relpath for relpath in shipped.SOURCES.values()}  # installed where git has it
    for name, relpath in shipped.SOURCES.items():
        assert (REPO / relpath).is_file(), (name, relpath)  # the one copy in git
        assert shipped.path(name) == REPO / relpath        # read in place in a checkout


def test_placements_are_the_paths_the_readme_and_the_units_use():
    readme = (REPO / "README.md").read_text()
    for p in shipped.PLACEMENTS:  # the file, or the folder README's `install` lines copy it into
        assert p.dest in readme or f"{Path(p.dest).parent}/" in readme, p
    doc = re.search(r"^Documentation=file:(\S+)$", (REPO / "systemd/foldermirror.service").read_text(), re.M)
    assert doc and doc.group(1) in {p.dest for p in shipped.PLACEMENTS if p.name == "README.md"}
    exec_start = shipped._exec_start((REPO / "systemd/foldermirror.service").read_text())
    assert exec_start == "/opt/foldermirror/bin/foldermirror"


def test_install_units_writes_the_readme_paths_and_keeps_the_operators_config(tmp_path):
    root = tmp_path / "root"
    out, err = io.StringIO(), io.StringIO()
    umask = os.umask(0o077)
    try:
        assert shipped.install(root, remote_targets=False, out=out, err=err) == 0
    finally:
        os.umask(umask)
    assert (root / "etc/foldermirror").stat().st_mode & 0o777 == 0o755  # the service user reads its config
    assert (root / "etc/foldermirror/config.yaml").stat().st_mode & 0o777 == 0o644
    unit = root / "etc/systemd/system/foldermirror.service"
    assert unit.read_bytes() == (REPO / "systemd/foldermirror.service").read_bytes()
    assert (unit.stat().st_mode & 0o777) == 0o644
    assert (root / "etc/systemd/system/foldermirror@.service").is_file()
    assert (root / "etc/foldermirror/config.yaml").read_bytes() == (REPO / "config/example.yaml").read_bytes()
    assert (root / "opt/foldermirror/README.md").is_file()
    assert not (root / "etc/systemd/system/foldermirror.service.d").exists()  # only with --remote-targets
    assert "the units run /opt/foldermirror/bin/foldermirror, which is missing" in err.getvalue()
    assert not [p for p in root.rglob("*") if p.name.startswith(".")], "temp files left"

    # Again, after the operator edited the config and someone an installed unit.
    (root / "etc/foldermirror/config.yaml").write_text("folders: []\n")
    unit.write_text("stale\n")
    (root / "opt/foldermirror/bin").mkdir(parents=True)
    (root / "opt/foldermirror/bin/foldermirror").touch()
    out, err = io.StringIO(), io.StringIO()
    shipped.install(root, remote_targets=True, out=out, err=err)
    assert (root / "etc/foldermirror/config.yaml").read_text() == "folders: []\n"
    assert unit.read_bytes() == (REPO / "systemd/foldermirror.service").read_bytes()
    lines = out.getvalue().splitlines()
    assert f"installed {unit}" in lines
    assert f"unchanged {root}/etc/systemd/system/foldermirror@.service" in lines
    assert any(line.startswith(f"kept {root}/etc/foldermirror/config.yaml") for line in lines), lines
    for unit_dir in ("foldermirror.service.d", "foldermirror@.service.d"):
        drop_in = root / "etc/systemd/system" / unit_dir / "remote-targets.conf"
        assert drop_in.read_bytes() == (REPO / "systemd/remote-targets.conf").read_bytes()
    assert err.getvalue() == ""  # the units' ExecStart= exists under this root now


def test_install_units_names_the_file_it_cannot_write(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").write_text("not a folder")
    with pytest.raises(shipped.FoldermirrorError, match=r"cannot install .*/etc/systemd/system/foldermirror\.service"):
        shipped.install(root, remote_targets=False, out=io.StringIO(), err=io.StringIO())


# -- fault injection stays out of services ----------------------------------------------------

@pytest.mark.parametrize("environ, refused", [
    ({"FOLDERMIRROR_FAULTS": "slow_copy:x"}, False),                                   # a test
    ({"FOLDERMIRROR_FAULTS": "slow_copy:x", "NOTIFY_SOCKET": "/run/n"}, False),        # a notify test
    ({"FOLDERMIRROR_FAULTS": "slow_copy:x", "INVOCATION_ID": "ab" * 16}, True),        # systemd runs it
    ({"FOLDERMIRROR_FAULTS": "slow_copy:x", "INVOCATION_ID": "ab" * 16,
      "FOLDERMIRROR_FAULTS_UNDER_SYSTEMD": "1"}, False),                               # and means it
    ({"FOLDERMIRROR_FAULTS": " , ", "INVOCATION_ID": "ab" * 16}, False),               # nothing asked
    ({"INVOCATION_ID": "ab" * 16}, False),
])
def test_faults_are_refused_under_systemd_without_the_second_variable(environ, refused):
    assert faults.refused(environ) is refused


def test_faults_docstring_and_readme_say_so():
    assert "INVOCATION_ID" in (faults.__doc__ or "") and faults.UNDER_SYSTEMD in (faults.__doc__ or "")
    readme = (REPO / "README.md").read_text()
    assert "faults_enabled" in readme and "faults_refused" in readme and faults.UNDER_SYSTEMD in readme


def test_the_version_has_one_place():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "foldermirror.__version__"}
    assert pyproject["project"]["license"] == "MIT" and pyproject["project"]["license-files"] == ["LICENSE"]
    assert Path(REPO / "LICENSE").read_text().startswith("MIT License")
