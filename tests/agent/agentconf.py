"""Add keys to an AgentProc's config file before it starts (the harness writes the file in
its constructor; this merges more sections into it)."""

from __future__ import annotations

from typing import Any

import yaml

from testing.agent_harness import AgentProc


def configure(agent: AgentProc, **sections: Any) -> AgentProc:
    cfg = yaml.safe_load(agent.config.read_text())
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    agent.config.write_text(yaml.safe_dump(cfg))
    return agent
