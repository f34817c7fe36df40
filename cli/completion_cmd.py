"""`meshnode completion bash|zsh|fish|tcsh`: print a shell completion script.

Made by shtab from the same argparse parser the command runs, so every subcommand, flag
and choice is completed, and file/directory arguments complete paths. The script is
static: pressing TAB never starts Python.

    meshnode completion bash > /etc/bash_completion.d/meshnode
    meshnode completion zsh  > "${fpath[1]}/_meshnode"
    meshnode completion fish > ~/.config/fish/completions/meshnode.fish
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh", "fish", "tcsh")
_FILE_METAVARS = {"FILE", "PEM", "PATH"}
_DIR_METAVARS = {"DIR"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh, "
                                          "fish, tcsh)")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(handler=cmd_completion)


def _mark_paths(parser: argparse.ArgumentParser) -> None:
    """Path completion for the options whose metavar names a file or a directory."""
    import shtab

    for act in parser._actions:
        if isinstance(act, argparse._SubParsersAction):
            for child in set(act.choices.values()):
                _mark_paths(child)
        elif act.option_strings and act.metavar in _FILE_METAVARS:
            act.complete = shtab.FILE  # type: ignore[attr-defined]
        elif act.option_strings and act.metavar in _DIR_METAVARS:
            act.complete = shtab.DIRECTORY  # type: ignore[attr-defined]


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    _mark_paths(parser)
    return str(shtab.complete(parser, shell=shell))


def cmd_completion(a: argparse.Namespace) -> int:
    # The whole command's parser: cli/main.py hands it to every handler as `root_parser`.
    text = script(a.root_parser, a.shell)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0
