"""The man page and the bash and zsh completions, generated from the argument parser itself.

`foldermirror man` prints foldermirror(1) as roff; `foldermirror completion bash|zsh` prints
a completion script. Both walk cli.build_parser() (every command, option, choice and help
text), so they cannot fall behind it; nothing here is needed at run time by the daemon, and
nothing beyond the standard library is used.

  foldermirror man | sudo tee /usr/local/share/man/man1/foldermirror.1 >/dev/null
  foldermirror completion bash | sudo tee /etc/bash_completion.d/foldermirror >/dev/null
  foldermirror completion zsh > ~/.zfunc/_foldermirror        # a folder in $fpath; then compinit
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from dataclasses import dataclass

from foldermirror import __version__
from foldermirror.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK

PROG = "foldermirror"


# -- what the parser declares -------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]        # long first: ("--config", "-c")
    help: str
    metavar: str | None           # None: takes no value (a flag)
    choices: tuple[str, ...]
    files: str | None             # "file" or "dir" when the value is a path
    required: bool = False        # a positional that must be given


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    description: str
    options: tuple[Option, ...]
    positionals: tuple[Option, ...]  # flags: (), metavar: the name shown


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": prog}
    return " ".join(text.split())


def _option(action: argparse.Action, prog: str) -> Option:
    choices = tuple(str(c) for c in action.choices) if action.choices is not None else ()
    takes_value = action.nargs != 0
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if takes_value and metavar is None:
        metavar = "{" + ",".join(choices) + "}" if choices else action.dest.upper()
    files = {"FILE": "file", "DIR": "dir"}.get(metavar or "") if not choices else None
    flags = tuple(sorted(action.option_strings, key=lambda f: (not f.startswith("--"), f)))
    required = not action.option_strings and action.nargs not in ("?", "*")
    return Option(flags, _help(action, prog), metavar if takes_value else None, choices, files, required)


def _arguments(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], tuple[Option, ...]]:
    options: list[Option] = []
    positionals: list[Option] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        (options if action.option_strings else positionals).append(_option(action, parser.prog))
    return tuple(options), tuple(positionals)


def commands(parser: argparse.ArgumentParser) -> tuple[Command, ...]:
    """Every subcommand, in the order build_parser adds them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help or "" for a in action._choices_actions}
            out = []
            for name, sub in action.choices.items():
                options, positionals = _arguments(sub)
                out.append(Command(name, summaries.get(name, ""), " ".join((sub.description or "").split()),
                                   options, positionals))
            return tuple(out)
    return ()


# -- the man page -------------------------------------------------------------------------
EXIT_STATUS = (
    (EXIT_OK, "success; for run, a clean stop on SIGTERM or SIGINT"),
    (EXIT_FAILURE, "any other failure: for sync, some files could not be mirrored; for check, some folder "
                   "cannot be served by the user running it"),
    (EXIT_NOT_RUNNING, "status, rescan: no daemon is running for this config"),
    (EXIT_CONFIG, "a configuration error (file, line, column and key are named) or no config file; the "
                  "units' RestartPreventExitStatus=78 does not restart it"),
)


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and dashes escaped, no line starting as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def _bold(text: str) -> str:
    return f"\\fB{_roff(text)}\\fR"


def _synopsis_option(o: Option) -> str:
    value = f" \\fI{_roff(o.metavar)}\\fR" if o.metavar else ""
    return f"[{_bold(o.flags[0])}{value}]"


def _tagged(o: Option) -> list[str]:
    if o.flags:
        head = ", ".join(_bold(f) for f in o.flags) + (f" \\fI{_roff(o.metavar)}\\fR" if o.metavar else "")
    else:
        head = f"\\fI{_roff(o.metavar or '')}\\fR"
    return [".TP", head, _roff(o.help)]


def man_page(parser: argparse.ArgumentParser) -> str:
    """foldermirror(1) in roff (man macros): every command with each option and its help."""
    from foldermirror.cli import CONFIG_ENV, DEFAULT_CONFIG

    cmds = commands(parser)
    top_options, _ = _arguments(parser)
    lines = [f'.TH FOLDERMIRROR 1 "" "{PROG} {__version__}" "User Commands"',
             ".SH NAME", f"{PROG} \\- {_roff((parser.description or '').rstrip('.'))}",
             ".SH SYNOPSIS"]
    lines += [f".B {PROG}", " ".join(_synopsis_option(o) for o in top_options), "\\fICOMMAND\\fR", ".br"]
    for c in cmds:
        words = [_synopsis_option(o) for o in c.options if o.flags[0] not in ("--help",)]
        words += [f"\\fI{_roff(p.metavar or '')}\\fR" if p.required else f"[\\fI{_roff(p.metavar or '')}\\fR]"
                  for p in c.positionals]
        lines += [f".B {PROG} {_roff(c.name)}", *([" ".join(words)] if words else []), ".br"]
    lines.pop()
    lines += [".SH DESCRIPTION", _roff(parser.description or ""),
              "Each command's options follow; every command also takes \\fB\\-\\-help\\fR.",
              ".SH OPTIONS"]
    for o in top_options:
        lines += _tagged(o)
    lines.append(".SH COMMANDS")
    for c in cmds:
        lines += [f".SS {_roff(c.name)}", _roff(c.description or c.summary)]
        for o in (*c.positionals, *c.options):
            if o.flags[:1] != ("--help",):
                lines += _tagged(o)
    lines += [".SH ENVIRONMENT", ".TP", f".B {CONFIG_ENV}",
              _roff(f"The config file when --config is not given. A file it names must exist; with neither, "
                    f"{DEFAULT_CONFIG} is used."),
              ".SH FILES", ".TP", f".I {_roff(DEFAULT_CONFIG)}",
              _roff("The config foldermirror.service runs; foldermirror@NAME.service runs /etc/foldermirror/NAME.yaml. "
                    "`foldermirror files example.yaml` prints the annotated example."),
              ".SH EXIT STATUS"]
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f".B {code}", _roff(meaning)]
    lines += [".SH SEE ALSO", ".BR systemctl (1),", ".BR journalctl (1),", ".BR rsync (1);",
              _roff("README.md (`foldermirror files README.md`), /opt/foldermirror/README.md once installed.")]
    return "\n".join(lines) + "\n"


# -- completions --------------------------------------------------------------------------
def _sq(text: str) -> str:
    """A single-quoted shell word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _bash_values(o: Option) -> str:
    if o.choices:
        return f"_foldermirror_words {_sq(' '.join(o.choices))}"
    if o.files:
        return f"_foldermirror_paths {'-d' if o.files == 'dir' else '-f'}"
    return "COMPREPLY=()"


def bash_completion(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    top_options, _ = _arguments(parser)
    out = [f"# bash completion for {PROG}, generated by `{PROG} completion bash` from its argument parser.",
           f"# Install: {PROG} completion bash | sudo tee /etc/bash_completion.d/{PROG} >/dev/null",
           "# (or source it from ~/.bashrc). Needs nothing but bash itself.",
           "_foldermirror_words() { mapfile -t COMPREPLY < <(compgen -W \"$1\" -- \"$cur\"); }",
           "_foldermirror_paths() {",
           "    mapfile -t COMPREPLY < <(compgen \"$1\" -- \"$cur\")",
           "    compopt -o filenames 2>/dev/null || true   # outside a completion (a test) there is none",
           "}",
           "_foldermirror() {",
           "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd= i",
           "    COMPREPLY=()",
           "    for ((i = 1; i < COMP_CWORD; i++)); do",
           "        case ${COMP_WORDS[i]} in",
           f"            {'|'.join(c.name for c in cmds)}) cmd=${{COMP_WORDS[i]}}; break ;;",
           "        esac",
           "    done",
           "    local opts words",
           "    case $cmd in",
           f"        '') opts={_sq(' '.join(f for o in top_options for f in o.flags))}; "
           f"words={_sq(' '.join(c.name for c in cmds))} ;;"]
    for c in cmds:
        out.append(f"        {_sq(c.name)})")
        valued = [o for o in c.options if o.metavar]
        if valued:
            out.append("            case $prev in")
            for o in valued:
                out.append(f"                {'|'.join(o.flags)}) {_bash_values(o)}; return 0 ;;")
            out.append("            esac")
        words = " ".join(ch for p in c.positionals for ch in p.choices)
        out.append(f"            opts={_sq(' '.join(f for o in c.options for f in o.flags))}; words={_sq(words)} ;;")
    out += ["    esac",
            "    if [[ $cur == -* ]]; then _foldermirror_words \"$opts\"; else _foldermirror_words \"$words\"; fi",
            "    return 0",
            "}",
            f"complete -F _foldermirror {PROG}"]
    return "\n".join(out) + "\n"


def _zsh_text(text: str, limit: int = 80) -> str:
    """A short description for zsh: the help's first clause, without what _arguments parses."""
    first = re.split(r";|\. | \(", text, maxsplit=1)[0].strip().rstrip(".")
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + "…"
    return first.replace("\\", "").replace("[", "(").replace("]", ")").replace(":", " -")


def _zsh_spec(o: Option, index: int = 0) -> str:
    if o.flags:
        names = o.flags[0] if len(o.flags) == 1 else "{" + ",".join(o.flags) + "}"
        group = _sq(f"({' '.join(o.flags)})") if len(o.flags) > 1 else ""
        head = f"{group}{names}" if len(o.flags) > 1 else _sq(names)
        spec = f"[{_zsh_text(o.help)}]"
    else:
        head, spec = "", f"{index}"
    if o.metavar:
        message = (o.flags[0].lstrip("-").replace("-", " ") if o.metavar.startswith("{") and o.flags
                   else _zsh_text(o.metavar)) or "value"
        action = (f"({' '.join(o.choices)})" if o.choices else
                  "_files -/" if o.files == "dir" else "_files" if o.files else " ")
        spec += f":{message}:{action}"
    return f"{head}{_sq(spec)}"


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    top_options, _ = _arguments(parser)
    out = [f"#compdef {PROG}",
           f"# zsh completion for {PROG}, generated by `{PROG} completion zsh` from its argument parser.",
           f"# Install: {PROG} completion zsh > DIR/_{PROG} for a DIR in $fpath, then compinit;",
           "# or source it after compinit.",
           "_foldermirror() {",
           "    local curcontext=$curcontext state state_descr line ret=1",
           "    typeset -A opt_args",
           "    _arguments -C \\"]
    out += [f"        {_zsh_spec(o)} \\" for o in top_options]
    out += ["        '1: :->command' \\",
            "        '*:: :->args' && ret=0",
            "    case $state in",
            "        command)",
            "            local -a cmds",
            "            cmds=("]
    out += [f"                {_sq(c.name + ':' + _zsh_text(c.summary))}" for c in cmds]
    out += ["            )",
            f"            _describe -t commands {_sq(PROG + ' command')} cmds && ret=0 ;;",
            "        args)",
            "            curcontext=${curcontext%:*:*}:foldermirror-$words[1]:",
            "            case $words[1] in"]
    for c in cmds:
        specs = [_zsh_spec(o) for o in c.options] + [_zsh_spec(p, i) for i, p in enumerate(c.positionals, 1)]
        out.append(f"                {_sq(c.name)})")
        out.append("                    _arguments \\")
        out += [f"                        {s} \\" for s in specs]
        out.append("                        && ret=0 ;;")
    out += ["            esac ;;",
            "    esac",
            "    return ret",
            "}",
            'if [[ $funcstack[1] == _foldermirror ]]; then _foldermirror "$@"; else compdef _foldermirror '
            f"{PROG}; fi"]
    return "\n".join(out) + "\n"


GENERATORS = {"bash": bash_completion, "zsh": zsh_completion}


def names(parser: argparse.ArgumentParser) -> Iterator[str]:
    """Every command name and option string the parser declares (what the outputs must all hold)."""
    for o in _arguments(parser)[0]:
        yield from o.flags
    for c in commands(parser):
        yield c.name
        for o in c.options:
            yield from o.flags


# -- the subcommands (cli.build_parser adds them) --------------------------------------------
def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    man = sub.add_parser("man", help="print the man page, foldermirror(1), as roff",
                         description="Print the manual page foldermirror(1) in roff, generated from this "
                                     "command line's own definitions: read it with `foldermirror man | man -l -`, "
                                     "or install it as /usr/local/share/man/man1/foldermirror.1.")
    man.set_defaults(handler=_man_command)
    completion = sub.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script for SHELL, generated from this command line's own definitions. "
                    "bash: `foldermirror completion bash | sudo tee /etc/bash_completion.d/foldermirror`, or "
                    "`source <(foldermirror completion bash)` in ~/.bashrc. zsh: save it as _foldermirror in a "
                    "folder of $fpath, then run compinit.")
    completion.add_argument("shell", choices=tuple(GENERATORS), metavar="SHELL", help="bash or zsh")
    completion.set_defaults(handler=_completion_command)


def _man_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(man_page(parser), end="")
    return EXIT_OK


def _completion_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(GENERATORS[args.shell](parser), end="")
    return EXIT_OK
