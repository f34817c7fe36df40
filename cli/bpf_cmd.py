"""`meshnode bpf status|maps`: the eBPF backend as the kernel sees it.

Read-only on purpose: it reads the pinned links and maps with bpftool, so asking for status
never loads or attaches anything (loading goes through the agent or `redirect apply`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from typing import Any

from cli.errors import UserError
from cli.output import add_output_flag, emit, table_text
from core.bpf import default_pin_dir


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bpf", help="eBPF programs, attach points and map entries")
    bsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, fn, helptext in (
            ("status", cmd_status, "programs, attach points, link ids, map fill"),
            ("maps", cmd_maps, "enrolled netns with their options, live original destinations")):
        q = bsub.add_parser(action, help=helptext)
        q.add_argument("--pin-dir", default=None, help="bpffs dir (default: $MESHNODE_BPF_PIN_DIR "
                                                       "or /sys/fs/bpf/meshnode)")
        add_output_flag(q)
        q.set_defaults(handler=fn)


def _bpftool(*args: str) -> Any:
    try:
        out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True,
                             check=True, timeout=20).stdout
    except FileNotFoundError:
        raise UserError("bpftool not found (install the bpftool package)") from None
    except subprocess.CalledProcessError as exc:
        raise UserError(f"bpftool {' '.join(args)}: {exc.stderr.strip()}") from None
    return json.loads(out) if out.strip() else None


def _pins(pin_dir: str) -> list[str]:
    if not os.path.isdir(pin_dir):
        raise UserError(f"nothing pinned at {pin_dir}: the eBPF backend is not loaded "
                        "(or its bpffs is elsewhere: --pin-dir)")
    return sorted(os.listdir(pin_dir))


def cmd_status(a: argparse.Namespace) -> int:
    pin_dir = a.pin_dir or default_pin_dir()
    rows = []
    for name in _pins(pin_dir):
        if name == "netns":
            # mn_sk_lookup: one link per enrolled pod's netns, named by its netns cookie
            for cookie in sorted(os.listdir(os.path.join(pin_dir, name))):
                info = _bpftool("link", "show", "pinned", os.path.join(pin_dir, name, cookie))
                rows.append({"kind": "link", "name": f"sk_lookup netns:{cookie}",
                             "id": info.get("id"), "prog_id": info.get("prog_id"),
                             "attach": info.get("attach_type"),
                             "cgroup_id": f"netns_ino={info.get('netns_ino')}"})
        elif name.startswith("link_"):
            info = _bpftool("link", "show", "pinned", os.path.join(pin_dir, name))
            rows.append({"kind": "link", "name": name[5:], "id": info.get("id"),
                         "prog_id": info.get("prog_id"), "attach": info.get("attach_type"),
                         "cgroup_id": info.get("cgroup_id")})
        else:
            info = _bpftool("map", "show", "pinned", os.path.join(pin_dir, name))
            dump = _bpftool("map", "dump", "pinned", os.path.join(pin_dir, name)) or []
            rows.append({"kind": "map", "name": name, "id": info.get("id"),
                         "type": info.get("type"), "entries": len(dump),
                         "max_entries": info.get("max_entries")})
    emit({"pin_dir": pin_dir, "objects": rows}, a.output, table=table_text(
        rows, ["kind", "name", "id", "prog_id", "attach", "cgroup_id", "type", "entries",
               "max_entries"]))
    return 0


def cmd_maps(a: argparse.Namespace) -> int:
    pin_dir = a.pin_dir or default_pin_dir()
    out: dict[str, Any] = {}
    for name in _pins(pin_dir):
        if not name.startswith("link_") and name != "netns":
            out[name] = _bpftool("map", "dump", "pinned", os.path.join(pin_dir, name)) or []
    text = "".join(f"{name}: {len(entries)} entries\n" +
                   "".join(f"  {json.dumps(e.get('formatted', e))}\n" for e in entries[:50])
                   for name, entries in out.items())
    emit(out, a.output, table=text)
    return 0
