"""Remove this node's `meshnode.io/not-ready` taint once the agent can capture pods.

The taint (NoSchedule, put on the node by the installer or the node's bootstrap) keeps pods
off a node before its agent can capture them. Only that taint is removed, with a JSON patch
that first tests the node's resourceVersion: if anyone changed the node since we read it
(another taint added or removed, a label, a status update), the server refuses the patch and
we read again, so a concurrent change is never overwritten.
"""

from __future__ import annotations

from typing import Any

import structlog

from agent.k8s.api import ApiError, KubeApi

log = structlog.get_logger("k8s.taint")
TAINT_KEY = "meshnode.io/not-ready"
CONFLICT = (409, 422)  # 409: conflict; 422: a failed `test` op (the node changed)


def removal_ops(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch removing our taint from this version of the node; [] if absent."""
    meta = node.get("metadata") or {}
    taints = (node.get("spec") or {}).get("taints") or []
    ours = [i for i, t in enumerate(taints) if isinstance(t, dict) and t.get("key") == TAINT_KEY]
    if not ours:
        return []
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                  "value": meta.get("resourceVersion", "")}]
    for i in reversed(ours):  # highest index first: earlier indices stay valid
        ops.append({"op": "test", "path": f"/spec/taints/{i}", "value": taints[i]})
        ops.append({"op": "remove", "path": f"/spec/taints/{i}"})
    return ops


async def remove_not_ready_taint(api: KubeApi, node: str, attempts: int = 10) -> bool:
    """True once the taint is gone (removed now, or already absent). Raises ApiError on
    anything but a conflict; False if every attempt conflicted."""
    for attempt in range(attempts):
        current = await api.get_node(node)
        ops = removal_ops(current)
        if not ops:
            return True
        try:
            await api.patch_node_json(node, ops)
        except ApiError as exc:
            if exc.status in CONFLICT:
                log.info("k8s_taint_conflict", node=node, attempt=attempt + 1)
                continue
            raise
        log.info("k8s_taint_removed", node=node, taint=TAINT_KEY)
        return True
    return False
