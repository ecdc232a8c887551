"""The command line's pure parts: finding the config, the access probes, fix texts.

The commands themselves, run as processes, are tested in daemon/test_cli.py.
"""

from __future__ import annotations

import errno
import inspect
import os

import pytest

from foldermirror import checks
from foldermirror.cli import CONFIG_ENV, DEFAULT_CONFIG, find_config
from foldermirror.config import FolderConfig
from foldermirror.errors import PERMANENT_ERRNOS, NoConfigError, fix_for
from helpers import CONFIG_ENV as HELPERS_CONFIG_ENV
from helpers import REPO, TEMP_MARK


def test_the_helpers_keep_the_same_variable_out_of_test_processes():
    assert HELPERS_CONFIG_ENV == CONFIG_ENV


# -- finding the config ------------------------------------------------------------------------

def test_the_default_config_is_the_units_one():
    assert DEFAULT_CONFIG == "/etc/foldermirror/config.yaml"
    assert inspect.signature(find_config).parameters["default"].default == DEFAULT_CONFIG
    assert f"--config {DEFAULT_CONFIG}" in (REPO / "systemd" / "foldermirror.service").read_text()


def test_config_is_taken_from_the_option_then_the_variable_then_the_default(tmp_path):
    given, named, default = (tmp_path / n for n in ("given.yaml", "named.yaml", "default.yaml"))
    for p in (given, named, default):
        p.write_text("folders: []\n")
    env = {CONFIG_ENV: str(named)}
    assert find_config(str(given), env, str(default)) == str(given)      # --config beats the variable
    assert find_config(None, env, str(default)) == str(named)            # the variable beats the default
    assert find_config(None, {}, str(default)) == str(default)
    assert find_config(None, {CONFIG_ENV: ""}, str(default)) == str(default)  # set but empty: not set
    missing = str(tmp_path / "missing.yaml")
    assert find_config(missing, env, str(default)) == missing            # loading it says it is missing


def test_no_config_anywhere_names_every_way_to_give_one(tmp_path):
    default = tmp_path / "default.yaml"
    with pytest.raises(NoConfigError) as none:
        find_config(None, {}, str(default))
    assert str(none.value) == f"no config file: give --config FILE, set {CONFIG_ENV}, or create {default}"
    assert none.value.exit_code == 78
    default.write_text("folders: []\n")
    gone = tmp_path / "gone.yaml"
    with pytest.raises(NoConfigError) as wrong:  # a variable naming a missing file does not fall back
        find_config(None, {CONFIG_ENV: str(gone)}, str(default))
    assert f"{CONFIG_ENV} names {gone}, which does not exist" in str(wrong.value)
    assert "--config FILE" in str(wrong.value) and str(default) in str(wrong.value)


# -- check: the access probes ----------------------------------------------------------------

def test_probes_create_the_folders_only_when_asked(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "a" / "dst"
    f = FolderConfig(name="x", source=src, target=dst, create=True)
    dry = checks.probe_folder(f, "cafe0001", create=False)
    assert dry.problem is None and not src.exists() and not dst.parent.exists(), dry
    assert any(str(dst) in note for note in dry.proved), dry
    assert checks.folder_problem(f, "cafe0001") is None
    assert src.is_dir() and dst.is_dir()
    assert not [n for n in os.listdir(dst) if TEMP_MARK in n]
    (tmp_path / "file").write_bytes(b"")
    in_the_way = FolderConfig(name="y", source=src, target=tmp_path / "file" / "dst")
    assert checks.probe_folder(in_the_way, "cafe0001", create=False).problem == (
        f"cannot create target {tmp_path / 'file' / 'dst'}: {tmp_path / 'file'}: Not a directory (ENOTDIR)")


# -- fix texts fit the mode ------------------------------------------------------------------

@pytest.mark.parametrize("err_no", [errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EIO, 0])
def test_only_a_failure_that_is_retried_says_so(err_no):
    assert "retried with backoff" in fix_for(err_no, True)
    assert "retried with backoff" not in fix_for(err_no, False)
    assert "run sync again" in fix_for(err_no, False)


@pytest.mark.parametrize("err_no", sorted(PERMANENT_ERRNOS))
def test_a_failure_no_retry_helps_promises_nothing(err_no):
    for will_retry in (True, False):
        fix = fix_for(err_no, will_retry)
        assert fix and "retried" not in fix and "sync again" not in fix, fix
