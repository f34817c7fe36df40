"""Framing of the mesh config channel, shared by the agent and the proxy.

One message = a 4-byte big-endian length + a JSON object. JSON rather than protobuf: the
channel is local and private to meshnode (ZDS is the Istio-compatible one), the proxy needs
only a few fields of each record, and JSON keeps both ends debuggable (`socat` shows it).
Every message has a type `t`:

- `snapshot`: `workloads`, `services`, `policies`, `traffic`, `egress`, `labels`
  (everything the agent holds; the proxy replaces its table with it), sent first on every
  connection;
- `delta`: upserts (the same six lists) and removals by key (`removed_workloads`,
  `removed_services`, `removed_policies`, `removed_traffic`, `removed_egress`,
  `removed_labels`), one per applied discovery response;
- `cert`: `identity` + `key`, `chain`, `roots` (PEM text), or `identity` + `removed: true`.

The records of those lists are core/mesh/channel.py's. A proxy older than the traffic lists
ignores them (it reads the keys it knows).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

MAX_FRAME = 512 * 1024 * 1024  # a 100k-workload snapshot is ~40 MB; refuse absurd lengths
_LEN = struct.Struct("!I")


class WireError(ValueError):
    pass


def frame(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    return _LEN.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at a clean EOF between messages."""
    try:
        head = await reader.readexactly(_LEN.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise WireError("truncated frame header") from None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise WireError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    try:
        body = await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise WireError("truncated frame") from None
    msg = json.loads(body)
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise WireError("a message must be an object with a string `t`")
    return msg
