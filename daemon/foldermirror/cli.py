"""Command line: `run`, `check`, `sync`, `status`, `rescan`, `versions` and `restore`; maps errors to exit codes.

The commands that need no config (`files`, `install-units`, `man`, `completion`) are in
shipped.py and docgen.py, which add their own parsers and handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from foldermirror import __version__, docgen, shipped
from foldermirror.config import Config, load_config, settings
from foldermirror.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, FoldermirrorError, NoConfigError
from foldermirror.logs import configure_logging

DEFAULT_CONFIG = "/etc/foldermirror/config.yaml"
CONFIG_ENV = "FOLDERMIRROR_CONFIG"
CONFIG_HELP = (f"the YAML config file (relative paths in it are resolved against its folder); default: "
               f"${CONFIG_ENV} when set, else {DEFAULT_CONFIG}")


def find_config(given: str | None, environ: Mapping[str, str], default: str = DEFAULT_CONFIG) -> str:
    """The config file to load: --config, else $FOLDERMIRROR_CONFIG, else the default path.

    A file --config names is loaded even when missing (loading says so). One the variable names
    must exist: falling back to the default would mirror folders nobody asked for.
    """
    if given:
        return given
    named = environ.get(CONFIG_ENV)
    if named:
        if _absent(named):
            raise NoConfigError(f"no config file: {CONFIG_ENV} names {named}, which does not exist; give "
                                f"--config FILE, set {CONFIG_ENV} to an existing file, or unset it to use {default}")
        return named
    if _absent(default):
        raise NoConfigError(f"no config file: give --config FILE, set {CONFIG_ENV}, or create {default}")
    return default


def _absent(path: str) -> bool:
    # Not os.path.exists(): a file in a folder this user may not search is there, and loading
    # it says "permission denied" rather than "create it".
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foldermirror",
        description="Keep live mirrors of folders named in a YAML config file.",
    )
    parser.add_argument("--version", action="version", version=f"foldermirror {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description)
        p.add_argument("--config", "-c", metavar="FILE", help=CONFIG_HELP)
        return p

    run = add("run", "watch and mirror in the foreground until SIGTERM or SIGINT",
              "Watch every configured source and mirror each change into its target. Runs in the "
              "foreground (systemd does the daemonizing); logs one JSON line per event to stderr, "
              "or readable lines on a terminal. SIGHUP reloads the config; SIGTERM/SIGINT stop "
              "cleanly (exit 0). Exit 78 on a configuration error.")
    run.add_argument("--log-format", choices=("auto", "json", "console"),
                     help="override log.format from the config")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                     help="override log.level from the config")
    add("check", "validate the config and prove each folder can be served by the user running it",
        "Validate the config file, print each folder pair with its resolved paths and options, then "
        "prove with the probes `run` uses at start-up that the user running `check` can serve each "
        "folder: the source readable, the target writable (by a real temp file, removed at once; for a "
        "missing folder, the parent it would be created in). Nothing is created or left behind. Run it as "
        "the service's user (e.g. sudo -u foldermirror foldermirror check, or runuser -u foldermirror --), "
        "since root passes where that user may not. Prints one verdict line per folder. Exit 0 when every "
        "folder can be served, 1 when some folder cannot, 78 with a message naming file, line and key "
        "when the config is invalid.")
    sync = add("sync", "bring every target up to date once, then exit",
               "Compare each source with its target and mirror what differs, then exit. On a terminal "
               "(stderr), a progress bar (entries compared, then files and bytes done of the total, rate, "
               "time left) with warnings and errors above it, then a summary line; otherwise sync_progress "
               "log lines. Ctrl-C stops it cleanly: copies in flight finish (up to stop_grace) and it exits "
               "130. Exit 0 when everything was mirrored, 1 when some files failed, 78 on a configuration "
               "error (an unknown --folder too).")
    sync.set_defaults(sync_parser=sync)
    sync.add_argument("--folder", metavar="NAME", action="append",
                      help="only this folder; repeat for more (default: every folder); with --dry-run too")
    sync.add_argument("--log-format", choices=("auto", "json", "console"),
                      help="override log.format from the config")
    sync.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                      help="override log.level from the config (and -q, -v); on a terminal the default is "
                           "warning, the bar standing for the per-file info lines")
    loud = sync.add_mutually_exclusive_group()
    loud.add_argument("--quiet", "-q", action="store_true",
                      help="only warnings, errors and (on a terminal) the summary line: no progress bar")
    loud.add_argument("--verbose", "-v", action="store_true",
                      help="the per-file lines too (file_mirrored and the like, at level info); on a terminal "
                           "they print above the bar")
    sync.add_argument("--dry-run", "-n", action="store_true",
                      help="only list what would be copied, replaced and deleted (with counts); change nothing")
    sync.add_argument("--json", action="store_true",
                      help="with --dry-run: print the actions as NDJSON, one object per path (folder, action, "
                           "path, kind, bytes, reason)")
    sync.add_argument("--exit-code", action="store_true",
                      help="with --dry-run: exit 1 when a sync would change something (or some folder could not "
                           "be compared in full), 0 when not, as git diff --exit-code")
    status = add("status", "show what the running daemon is doing, per folder",
                 "Ask the daemon running this config (over its control socket) how each folder is doing: "
                 "state (in sync, catching up, degraded), files pending and in flight, lag (age of the oldest "
                 "pending change), files and bytes mirrored since start, the last error and whether its "
                 "watches are complete. Exit 0 with an answer, 3 when no daemon is running for this config.")
    status.add_argument("--json", action="store_true", help="print the answer as one JSON document")
    rescan = add("rescan", "ask the running daemon to compare folders with their targets now",
                 "Ask the daemon running this config to compare a folder (or every folder) with its target "
                 "now, as at start-up. Exit 0 when the request was taken, 3 when no daemon is running.")
    rescan.add_argument("--folder", metavar="NAME", help="only this folder (default: every folder)")
    versions = add("versions", "list the versions a folder keeps of a path, newest first",
                   "List the versions kept in a folder's versions area (see versions: in the config) of one "
                   "path, or of every path under a directory (the whole folder by default), newest first: the "
                   "time each left the mirror (UTC; the stamp restore --at takes), its size and path (a "
                   "directory's own version ends in /). Works on "
                   "the area itself (on a remote target's host, over an ssh login of its own): no daemon is "
                   "needed. Exit 0, 1 when the folder keeps no versions or its host cannot be reached, 78 on a "
                   "configuration error.")
    versions.add_argument("--folder", metavar="NAME", required=True, help="the folder whose versions are listed")
    versions.add_argument("path", metavar="PATH", nargs="?", default=".",
                          help="a path relative to the folder: a file, or a directory for all below it (default: .)")
    versions.add_argument("--json", action="store_true",
                          help="NDJSON, one object per version: folder, path, time, iso, size, kind, version")
    restore = add("restore", "write a kept version back into the source (or elsewhere)",
                  "Write a kept version of PATH (or of every path under the directory PATH) back, atomically "
                  "(a temp file renamed into place) with the version's bytes, mode and mtime, into the folder's "
                  "source by default: the running daemon then mirrors it as any change. Without --at, the newest "
                  "version; with --at, the one that was in the mirror at that time. Never over a file changed "
                  "after the version was kept, unless --force. A deleted directory's version makes it again "
                  "(an empty one too), with its mode and mtime set once the files are in; a directory that is "
                  "there is left as it is, unless --force. Exit 0 when every path was restored, 1 when "
                  "some was not (each is named), 78 on a configuration error.")
    restore.add_argument("--folder", metavar="NAME", required=True, help="the folder the version belongs to")
    restore.add_argument("path", metavar="PATH", help="a path relative to the folder (a directory: all below it)")
    restore.add_argument("--at", metavar="TIME",
                         help="the version in the mirror at TIME (ISO 8601, UTC unless it says; or a stamp as "
                              "`versions` lists it); default: the newest")
    restore.add_argument("--to", metavar="DEST", help="write under this directory instead of the source")
    restore.add_argument("--force", action="store_true",
                         help="replace a file even if it changed after the version was kept, and give a "
                              "directory that is there its version's mode and mtime")
    shipped.add_commands(sub)
    docgen.add_commands(sub)
    return parser


def describe(config: Config) -> str:
    """Every setting with its resolved value: the top level, log, metrics, then each folder."""
    return "\n".join([f"config: {config.path}", *_setting_lines(Config, config, "")])


def _setting_lines(cls: type, obj: Any, indent: str, unset: str | None = None) -> list[str]:
    """One line per setting `cls` declares, then each nested section under a header naming its key.

    `obj` is None for a section that is not configured (no metrics:); each of its settings then
    shows `unset`.
    """
    declared = settings(cls)
    plain = [(name, s) for name, s in declared.items() if s.section is None]
    width = max((len(name) for name, _ in plain), default=0) + 1
    lines = [f"{indent}{name + ':':<{width}} {unset if obj is None else s.format(getattr(obj, name))}"
             for name, s in plain]
    for name, s in declared.items():
        if s.section is None:
            continue
        value = None if obj is None else getattr(obj, name)
        items = [(f"{name}[{i}]", item) for i, item in enumerate(value or ())] if s.many else [(name, value)]
        for header, item in items:
            lines.append(f"{indent}{header}:")
            lines += _setting_lines(s.section, item, indent + "  ", s.unset if item is None else None)
    return lines


def exclude_changes(config: Config) -> list[str]:
    """`check`'s lines for each exclude pattern whose meaning changed with gitignore's rules."""
    from foldermirror import filters

    lines = []
    for f in config.folders:
        for c in filters.changes(f.exclude):
            lines.append(f"folder {f.name}: exclude {_yaml_quoted(c.pattern)} changed meaning: before, it matched "
                         f"{c.before}; now it matches {c.now}; for the old meaning write {_yaml_quoted(c.old_meaning)}")
    return lines


def _yaml_quoted(text: str) -> str:
    """As it is written in a YAML list: single quotes, where a backslash is itself."""
    return "'" + text.replace("'", "''") + "'"


def check(config: Config) -> int:
    """`check`: the resolved config, then one verdict per folder from the start-up probes, creating nothing."""
    from foldermirror import checks

    print(describe(config))
    for line in exclude_changes(config):
        print(line)
    instance = os.urandom(4).hex()
    failed: list[str] = []
    config_errors: list[str] = []
    for f in config.folders:
        access = checks.probe_folder(f, instance, create=False, ssh=config.ssh)
        if access.problem is None and f.remote is not None:
            remote = checks.prove_remote(f, config.ssh)
            access = checks.FolderAccess(remote.problem, access.proved + remote.proved, remote.config_error)
        if access.problem is None:
            print(f"folder {f.name}: ok ({'; '.join(access.proved)})")
        else:
            (config_errors if access.config_error else failed).append(f.name)
            print(f"folder {f.name}: cannot be served: {access.problem}")
    if config_errors:
        print(f"foldermirror: error: {config.path}: the config must change for folders {', '.join(config_errors)} "
              "(see above)", file=sys.stderr)
        return EXIT_CONFIG
    if failed:
        print(f"foldermirror: error: {len(failed)} of {len(config.folders)} folders cannot be served by "
              f"{checks.user_label()}: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


LEVELS = ("debug", "info", "warning", "error")


def sync_level(configured: str, *, given: str | None, quiet: bool, verbose: bool, tty: bool) -> str:
    """The log level `sync` runs at: --log-level as given; -v lets the per-file info lines through;
    -q, and a terminal (where the bar stands for those lines), only warnings and errors."""
    if given:
        return given
    if verbose:
        return min(configured, "info", key=LEVELS.index)
    if quiet or tty:
        return max(configured, "warning", key=LEVELS.index)
    return configured


def select_folders(config: Config, names: Sequence[str] | None) -> Config:
    """The config with only the folders `names` gives (--folder), in the config's order."""
    import dataclasses
    import difflib

    from foldermirror.errors import ConfigError

    if not names:
        return config
    known = [f.name for f in config.folders]
    for name in names:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            guess = f"did you mean {hint[0]!r}? " if hint else ""
            raise ConfigError(str(config.path), f"--folder {name}: no folder of that name; {guess}"
                                                f"folders: {', '.join(known)}")
    return dataclasses.replace(config, folders=tuple(f for f in config.folders if f.name in names))


def sync(config: Config, args: argparse.Namespace) -> int:
    """`sync` and `sync --dry-run`, for the folders --folder names (else every one)."""
    from foldermirror.errors import EXIT_INTERRUPTED

    if (args.json or args.exit_code) and not args.dry_run:
        args.sync_parser.error("--json and --exit-code go with --dry-run")
    config = select_folders(config, args.folder)
    try:
        return dry_run(config, args) if args.dry_run else sync_once(config, args)
    except KeyboardInterrupt:  # a dry run, or before the service takes Ctrl-C over: no traceback
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def dry_run(config: Config, args: argparse.Namespace) -> int:
    from foldermirror.catchup import dryrun
    from foldermirror.errors import EXIT_DIFFERENCES

    plans = dryrun.plan(config)
    if args.json:
        for line in dryrun.ndjson(plans):
            print(line)
        for problem in dryrun.problems(plans):
            print(f"foldermirror: {problem}", file=sys.stderr)
    else:
        print(dryrun.render(plans))
    if args.exit_code and not all(dryrun.in_sync(p) for p in plans):
        return EXIT_DIFFERENCES
    return EXIT_OK


def sync_once(config: Config, args: argparse.Namespace) -> int:
    from typing import TextIO, cast

    from foldermirror.service import Service
    from foldermirror.view.progress import SyncScreen, Terminal

    tty = sys.stderr.isatty()
    terminal = Terminal(sys.stderr) if tty else None
    level = sync_level(config.log.level, given=args.log_level, quiet=args.quiet, verbose=args.verbose, tty=tty)
    # On a terminal the log lines go through the bar's stream, which writes them above the bar.
    configure_logging(level, args.log_format or config.log.format,
                      stream=cast(TextIO, terminal) if terminal is not None else None)
    names = [f.name for f in config.folders]
    label = names[0] if len(names) == 1 else f"{len(names)} folders"
    screen = SyncScreen(sys.stderr, terminal, label=label, bar=not args.quiet)
    stderr = sys.stderr
    if terminal is not None:
        sys.stderr = cast(TextIO, terminal)  # anything else written there (a thread's traceback) goes above the bar too
    try:
        return Service(config, once=True, screen=screen).run()
    finally:
        sys.stderr = stderr
        if terminal is not None:
            terminal.clear()  # before an error message, which would otherwise land on the bar's line


def ask(config: Config, args: argparse.Namespace) -> int:
    """`status` and `rescan`: one request to the running daemon's control socket."""
    from foldermirror.view import control
    from foldermirror.view.status_table import render

    if args.command == "status":
        reply = control.ask_daemon(config, {"request": "status"})
    else:
        request = {"request": "rescan", **({"folder": args.folder} if args.folder else {})}
        reply = control.ask_daemon(config, request)
    if not reply.get("ok"):
        raise FoldermirrorError(f"the daemon refused: {reply.get('error', 'no reason given')}")
    if args.command == "rescan":
        print(f"rescan requested: {', '.join(reply['rescan'])}")
    elif args.json:
        print(json.dumps(reply["status"], indent=2))
    else:
        print(render(reply["status"]))
    return EXIT_OK


def versions_command(config: Config, args: argparse.Namespace) -> int:
    """`versions` and `restore`: on the folder's versions area directly (no daemon needed)."""
    from foldermirror import versioning
    from foldermirror.pipeline.versions import stamp

    f = select_folders(config, [args.folder]).folders[0]
    area = f.versions_area
    if area is None:
        raise FoldermirrorError(f"folder {f.name} keeps no versions (add versions: to it in {config.path})")
    remote = f.remote is not None  # a login of its own, as `check` (the daemon's master is its own)
    found = versioning.remote_listing(f, config.ssh, args.path) if remote else versioning.listing(area, args.path)
    if args.command == "versions":
        if args.json:
            from foldermirror.view.read_model import iso

            for v in found:
                print(json.dumps({"folder": f.name, "path": v.path, "time": stamp(v.ns), "iso": iso(v.ns / 1e9),
                                  "size": v.size, "kind": v.kind, "version": v.name}))
        elif found:
            print(f"{'TIME (UTC)':<24}  {'SIZE':>12}  PATH")
            for v in found:
                print(f"{stamp(v.ns):<24}  {v.size:>12,}  {v.path}{'/' if v.kind == 'dir' else ''}")
        return EXIT_OK
    at = versioning.parse_time(args.at) if args.at else None
    chosen = versioning.choose(found, at)
    if not chosen:
        when = f" kept at or after {args.at}" if args.at else ""
        raise FoldermirrorError(f"folder {f.name}: no version of {args.path}{when} in {area}")
    dest = args.to or str(f.source)
    plan = versioning.restore_plan(chosen)  # a remote area keeps no directories: files only
    failed = 0
    settle = []
    for v in plan.dirs:
        try:
            if versioning.make_dir(v, dest) or args.force:
                settle.append(v)
            else:
                print(f"left {v.path}/ as it is: a directory is there (--force gives it the version's mode and mtime)")
        except (OSError, FoldermirrorError) as exc:
            failed += 1
            print(f"foldermirror: error: {v.path}/: {exc}", file=sys.stderr)
    for v in plan.files:
        try:
            written = (versioning.restore_remote_one(f, config.ssh, v, dest, force=args.force) if remote
                       else versioning.restore_one(area, v, dest, force=args.force))
        except (OSError, FoldermirrorError) as exc:
            failed += 1
            print(f"foldermirror: error: {v.path}: {exc}", file=sys.stderr)
            continue
        print(f"restored {v.path} (version {stamp(v.ns)}, {v.size:,} bytes) to {written}")
    for v in reversed(settle):
        try:
            written = versioning.settle_dir(area, v, dest)
        except OSError as exc:
            failed += 1
            print(f"foldermirror: error: {v.path}/: {exc}", file=sys.stderr)
            continue
        print(f"restored {v.path}/ (directory, version {stamp(v.ns)}) to {written}")
    return EXIT_FAILURE if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "handler"):  # a command that needs no config
            try:
                return int(args.handler(args, parser))
            except BrokenPipeError:  # `foldermirror man | head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return EXIT_OK
        config = load_config(find_config(args.config, os.environ))
        if args.command == "check":
            return check(config)
        if args.command in ("status", "rescan"):
            return ask(config, args)
        if args.command == "sync":
            return sync(config, args)
        if args.command in ("versions", "restore"):
            return versions_command(config, args)
        from foldermirror.service import Service

        level = getattr(args, "log_level", None) or config.log.level
        fmt = getattr(args, "log_format", None) or config.log.format
        configure_logging(level, fmt)
        service = Service(config)
        return service.run()
    except FoldermirrorError as exc:
        print(f"foldermirror: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE
