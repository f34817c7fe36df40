"""Entry point of the `meshnode` console command.

Errors a user can act on are printed as one `error:` line with a non-zero exit; a traceback
never reaches the user.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cli import (
    agent_cmd,
    bpf_cmd,
    check_cmd,
    completion_cmd,
    controlplane_cmd,
    demo_cmd,
    install_cmd,
    proxy_cmd,
    proxyconfig_cmd,
    redirect_cmd,
    status_cmd,
    version_cmd,
)
from cli.errors import UserError

# Each module exposes `register(subparsers)`; handlers return the process exit code.
COMMAND_MODULES = [version_cmd, check_cmd, status_cmd, agent_cmd, proxy_cmd, controlplane_cmd,
                   proxyconfig_cmd, redirect_cmd, bpf_cmd, install_cmd, demo_cmd,
                   completion_cmd]

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshnode", description="Node-level traffic interception for a service mesh.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMAND_MODULES:
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.root_parser = parser  # for the handlers that need the whole command (completion)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the CLI's last line of defence: no traceback for users
        # Imported only on this error path: a command for the proxy or the control plane
        # never loads the agent's packages.
        from agent.redirect.errors import RedirectError
        from agent.redirect.spec import SpecError
        from core.config import ConfigError

        if isinstance(exc, RedirectError | SpecError | ConfigError | UserError | OSError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
