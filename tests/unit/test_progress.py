"""`sync` at a terminal, without one: the progress line from counts and a width, the rates, the
stream that writes log lines above the bar, and the sync command's arguments.

The command on a real pseudo-terminal is tested in daemon/test_sync_terminal.py.
"""

from __future__ import annotations

import io

import pytest
import yaml

from foldermirror import cli
from foldermirror.catchup.tracking import SyncCounts
from foldermirror.config import load_config
from foldermirror.errors import ConfigError
from foldermirror.view import progress
from foldermirror.view.progress import RateMeter, SyncScreen, Terminal, interrupted, render, summary
from terminal import Screen

MiB = 1 << 20
HALF = SyncCounts(comparing=False, entries=2000, to_copy=2000, bytes_to_copy=40 * MiB, files=1000,
                  bytes=20 * MiB, deleted=0, failed=0)
RATES = (100.0, 5.0 * MiB)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the line ------------------------------------------------------------------------------

def test_a_copy_under_way_shows_the_bar_files_bytes_rate_and_time_left():
    assert render(HALF, 100, "bulk", RATES) == (
        "bulk   50%  [==============>             ]  1,000/2,000 files  20.0/40.0 MiB  5.0 MiB/s  ETA 0:04")


def test_while_comparing_the_line_says_how_far_the_comparison_got():
    counts = HALF._replace(comparing=True, entries=12345, files=150, bytes=3 * MiB)
    assert render(counts, 100, "2 folders", RATES) == (
        "2 folders  comparing: 12,345 entries  2,000 to copy (40.0 MiB)  150 copied  5.0 MiB/s")
    assert render(counts, 100, "2 folders", None) == (  # no rate yet, and no time left while totals grow
        "2 folders  comparing: 12,345 entries  2,000 to copy (40.0 MiB)  150 copied")


@pytest.mark.parametrize("width", range(1, 161))
def test_the_line_never_reaches_the_last_column(width):
    for counts in (HALF, HALF._replace(failed=3), HALF._replace(comparing=True)):
        assert len(render(counts, width, "a-rather-long-folder-name", RATES)) <= max(width - 1, 1)


def test_what_does_not_fit_goes_least_useful_first():
    failing = HALF._replace(failed=3)
    assert render(failing, 100, "bulk", RATES) == (
        "bulk   50%  [=========>        ]  1,000/2,000 files  20.0/40.0 MiB  3 failed  5.0 MiB/s  ETA 0:04")
    assert render(failing, 90, "bulk", RATES) == (
        "bulk   50%  [=========>         ]  1,000/2,000 files  20.0/40.0 MiB  3 failed  ETA 0:04")
    assert render(failing, 70, "bulk", RATES) == "50%  [=======>       ]  1,000/2,000 files  20.0/40.0 MiB  3 failed"
    assert render(failing, 60, "bulk", RATES) == "50%  1,000/2,000 files  20.0/40.0 MiB  3 failed"
    assert render(failing, 40, "bulk", RATES) == "50%  1,000/2,000 files  3 failed"
    assert render(failing, 30, "bulk", RATES) == "50%  1,000/2,000 files"
    assert render(failing, 10, "bulk", RATES) == "50%"


def test_without_bytes_to_count_progress_is_by_files():
    links = SyncCounts(False, 10, 10, 0, 4, 0, 0, 0)
    assert render(links, 100, "links", (2.0, 0.0)) == "links   40%  [===========>                ]  4/10 files  2 files/s  ETA 0:03"


def test_the_summary_and_the_interrupted_line():
    done = HALF._replace(files=2000, bytes=40 * MiB, deleted=12, failed=1)
    assert summary(done, 7.25, unusable=0) == "sync done: 2,000 files (40.0 MiB) in 7.2s, 12 deleted, 1 failed (see above)"
    assert summary(HALF._replace(files=3, bytes=300), 0.5, unusable=2) == (
        "sync done: 3 files (300 B) in 500ms, 0 failed, 2 folders not served (see above)")
    assert interrupted(HALF) == "interrupted: 1,000 of 2,000 files copied"
    assert interrupted(HALF._replace(comparing=True)) == (
        "interrupted: 1,000 of 2,000 files copied; the comparison had not finished")


def test_the_rate_is_over_the_last_seconds():
    clock = Clock()
    meter = RateMeter(clock)
    assert meter.add(0, 0) is None
    clock.now += 0.2
    assert meter.add(2, 200) is None  # too soon to judge
    files = 2
    for _ in range(20):  # 10 files (1,000 bytes) a second for 10 s
        clock.now += 0.5
        files += 5
        rates = meter.add(files, files * 100)
    assert rates == pytest.approx((10.0, 1000.0))
    clock.now += 0.5
    files += 1000
    burst = meter.add(files, files * 100)  # only the last RATE_WINDOW seconds count, not the slow start
    assert burst is not None and burst[0] == pytest.approx(1050 / (progress.RATE_WINDOW + 0.5), rel=0.1)


# -- the terminal's stream -----------------------------------------------------------------

def test_log_lines_go_above_the_bar_and_the_bar_is_drawn_at_most_ten_times_a_second():
    out, clock = io.StringIO(), Clock()
    term = Terminal(out, clock)
    term.show("bar 1")
    term.show("bar 2")  # within REDRAW of the first: kept, not drawn
    assert out.getvalue() == "\rbar 1\x1b[K"
    term.write("first log line\n")  # the bar was drawn just now: it comes back at the next show
    clock.now += progress.REDRAW * 1.5
    term.write("second log line\n")  # long enough ago: drawn again at once, under the line
    screen = Screen(100)
    screen.feed(out.getvalue().replace("\n", "\r\n"))  # as the tty's ONLCR sends it
    assert screen.text() == ["first log line", "second log line", "bar 2"]
    clock.now += progress.REDRAW * 1.5
    term.show("bar 3")
    term.clear()
    term.write("after\n")
    screen = Screen(100)
    screen.feed(out.getvalue().replace("\n", "\r\n"))
    assert screen.text() == ["first log line", "second log line", "after"]


def test_the_screen_draws_nothing_when_quiet_or_off_a_terminal_but_says_it_was_interrupted():
    out = io.StringIO()
    quiet = SyncScreen(out, Terminal(out, Clock()), label="x", bar=False)
    quiet.update(HALF)
    assert out.getvalue() == ""
    quiet.finish(HALF, 1.0, 0)
    assert out.getvalue() == "sync done: 1,000 files (20.0 MiB) in 1.0s, 0 failed\n"
    plain = io.StringIO()
    off = SyncScreen(plain, None, label="x")
    off.update(HALF)
    off.finish(HALF, 1.0, 0)  # off a terminal the sync_finished lines are the summary
    assert plain.getvalue() == ""
    off.interrupted(HALF)
    assert plain.getvalue() == "interrupted: 1,000 of 2,000 files copied\n"


# -- the sync command's arguments ------------------------------------------------------------

@pytest.mark.parametrize(("configured", "given", "quiet", "verbose", "tty", "level"), [
    ("info", None, False, False, False, "info"),      # off a terminal: as configured
    ("info", None, False, False, True, "warning"),    # at a terminal the bar stands for the info lines
    ("info", None, False, True, True, "info"),        # -v: per-file lines too
    ("debug", None, False, True, True, "debug"),
    ("warning", None, False, True, False, "info"),
    ("info", None, True, False, False, "warning"),    # -q
    ("error", None, True, False, True, "error"),
    ("info", "debug", True, False, True, "debug"),     # --log-level as given
])
def test_the_log_level_sync_runs_at(configured, given, quiet, verbose, tty, level):
    assert cli.sync_level(configured, given=given, quiet=quiet, verbose=verbose, tty=tty) == level


def config_with(tmp_path, *names):
    folders = []
    for name in names:
        (tmp_path / name).mkdir()
        folders.append({"name": name, "source": str(tmp_path / name), "target": str(tmp_path / f"{name}-copy")})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"folders": folders}))
    return load_config(path)


def test_folder_picks_folders_by_name_and_an_unknown_one_is_a_config_error(tmp_path):
    config = config_with(tmp_path, "photos", "documents", "music")
    assert [f.name for f in cli.select_folders(config, ["music", "photos"]).folders] == ["photos", "music"]
    assert cli.select_folders(config, None) is config
    with pytest.raises(ConfigError) as typo:
        cli.select_folders(config, ["photos", "fotos"])
    assert typo.value.exit_code == 78
    assert str(typo.value) == (f"{config.path}: --folder fotos: no folder of that name; did you mean 'photos'? "
                               "folders: photos, documents, music")
    with pytest.raises(ConfigError) as unknown:
        cli.select_folders(config, ["zzz"])
    assert str(unknown.value).endswith("--folder zzz: no folder of that name; folders: photos, documents, music")


def test_sync_options_that_belong_together(tmp_path, capsys):
    config = config_with(tmp_path, "data")
    for argv in (["--json"], ["--exit-code"]):
        with pytest.raises(SystemExit) as usage:
            cli.main(["sync", "--config", str(config.path), *argv])
        assert usage.value.code == 2
        assert "--json and --exit-code go with --dry-run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as both:
        cli.main(["sync", "--config", str(config.path), "-q", "-v"])
    assert both.value.code == 2
    args = cli.build_parser().parse_args(["sync", "--folder", "a", "--folder", "b", "-n", "--json", "--exit-code"])
    assert (args.folder, args.dry_run, args.json, args.exit_code) == (["a", "b"], True, True, True)
