"""`meshnode install status|apply|remove`: the CNI plugin binary and its conflist entry."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from agent.install import InstallConfig, Installer, InstallError, PluginEntry
from agent.install.config import (
    DEFAULT_AGENT_SOCKET,
    DEFAULT_CNI_BIN_DIR,
    DEFAULT_CNI_NET_DIR,
    DEFAULT_PLUGIN_SOURCE,
    DEFAULT_STATE_FILE,
)
from cli.output import add_output_flag, emit, table_text


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)  # sys.stderr as it is at log time


@contextlib.contextmanager
def _logs_to_stderr() -> Iterator[None]:
    """Keep stdout for `-o json|yaml` output: log lines go to stderr, whatever the process
    configured before (a default structlog set-up prints to stdout). The previous
    configuration is restored afterwards, so nothing global is left changed."""
    was_configured, before = structlog.is_configured(), structlog.get_config()
    structlog.configure(logger_factory=_stderr_logger, cache_logger_on_first_use=False)
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**before)
        else:
            structlog.reset_defaults()


def add_install_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("install options")
    g.add_argument("--cni-bin-dir", type=Path, default=DEFAULT_CNI_BIN_DIR, metavar="DIR",
                   help="CNI plugin binaries (default: %(default)s)")
    g.add_argument("--cni-net-dir", type=Path, default=DEFAULT_CNI_NET_DIR, metavar="DIR",
                   help="CNI network configs (default: %(default)s)")
    g.add_argument("--plugin-source", type=Path, default=DEFAULT_PLUGIN_SOURCE, metavar="FILE",
                   help="the plugin executable to install (default: %(default)s)")
    g.add_argument("--agent-socket", default=DEFAULT_AGENT_SOCKET, metavar="PATH",
                   help="agent socket written into our conflist entry (default: %(default)s)")
    g.add_argument("--state-file", type=Path, default=DEFAULT_STATE_FILE, metavar="FILE",
                   help="where the agent records its last repair (default: %(default)s)")


def config_from_args(a: argparse.Namespace) -> InstallConfig:
    from cli.errors import check_flag_socket

    check_flag_socket("--agent-socket", a.agent_socket)
    return InstallConfig(cni_bin_dir=a.cni_bin_dir, cni_net_dir=a.cni_net_dir,
                         plugin_source=a.plugin_source, state_file=a.state_file,
                         entry=PluginEntry(agent_socket=a.agent_socket))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ins = sub.add_parser("install", help="install, inspect or remove the CNI plugin and entry")
    isub = ins.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = isub.add_parser("status", help="binary, chosen conflist, our entry, last repair; "
                                       "exit 1 when the install is not valid")
    add_install_flags(p)
    add_output_flag(p)
    p.set_defaults(handler=cmd_status)

    p = isub.add_parser("apply", help="install the plugin and chain our entry once "
                                      "(idempotent; the agent does this and keeps repairing)")
    add_install_flags(p)
    add_output_flag(p)
    p.set_defaults(handler=cmd_apply)

    p = isub.add_parser("remove", help="remove our conflist entry and the plugin binary")
    add_install_flags(p)
    add_output_flag(p)
    p.set_defaults(handler=cmd_remove)


def _event_text(ev: Any) -> str:
    return "-" if not ev else f"{ev['time']} ({ev['reason']})"


def status_table(st: dict[str, Any]) -> str:
    b = st["binary"]
    rows = [
        {"field": "ready", "value": "yes" if st["ready"] else "no"},
        {"field": "problems", "value": ", ".join(st["problems"]) or "-"},
        {"field": "binary", "value": b["path"]},
        {"field": "binary present", "value": "yes" if b["present"] else "no"},
        {"field": "binary sha256", "value": b["sha256"] or "-"},
        {"field": "binary mode", "value": b["mode"] or "-"},
        {"field": "conflist", "value": st["conflist"]["path"] or "- (none valid in "
                                                                 f"{st['conflist']['net_dir']})"},
        {"field": "entry", "value": "-" if st["entry"] is None
         else json.dumps(st["entry"], sort_keys=True)},
        {"field": "last repair", "value": _event_text(st["last_repair"])},
        {"field": "last install", "value": _event_text(st["last_install"])},
    ]
    rows += [{"field": "skipped", "value": f"{s['file']}: {s['reason']}"}
             for s in st["conflist"]["skipped"]]
    return table_text(rows, ["field", "value"])


def cmd_status(a: argparse.Namespace) -> int:
    with _logs_to_stderr():
        st = Installer(config_from_args(a)).status()
    emit(st, a.output, table=status_table(st), out=sys.stdout)
    return 0 if st["ready"] else 1


def _changes_out(a: argparse.Namespace, action: str, changes: list[str]) -> None:
    data = {"action": action, "changed": bool(changes), "changes": changes}
    rows = [{"change": c} for c in changes] or [{"change": "(nothing to do)"}]
    emit(data, a.output, table=table_text(rows, ["change"]), out=sys.stdout)


def cmd_apply(a: argparse.Namespace) -> int:
    try:
        with _logs_to_stderr():
            changes = Installer(config_from_args(a)).install(reason="cli_apply")
    except (InstallError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _changes_out(a, "apply", changes)
    return 0


def cmd_remove(a: argparse.Namespace) -> int:
    try:
        with _logs_to_stderr():
            changes = Installer(config_from_args(a)).uninstall()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _changes_out(a, "remove", changes)
    return 0
