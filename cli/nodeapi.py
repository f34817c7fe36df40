"""The node's own HTTP endpoints as the CLI reads them: the agent's (`http_address`,
agent/nodeagent/http.py) and the proxy's admin port (`admin_address`, proxy/admin.py).

Every failure is a UserError that says who did not answer where and what to do; a command
that needs the agent or the proxy never prints an empty answer for a daemon that is down.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cli.errors import UserError, check_flag_address
from core.ports import ADMIN_PORT, AGENT_HTTP_PORT

# Where the DaemonSet mounts the agent's config (deploy/daemonset.yaml): `meshnode ...` run
# in the agent's container (kubectl exec) reads it without --config.
DEPLOYED_AGENT_CONFIG = "/etc/meshnode/agent.yaml"
CONFIG_ENV = "MESHNODE_AGENT_CONFIG"
TIMEOUT = 3.0


class NotRunning(UserError):
    """Nothing answers at the daemon's address."""


def default_agent_config() -> str | None:
    """$MESHNODE_AGENT_CONFIG, else the deployed path if it exists, else None (defaults)."""
    env = os.environ.get(CONFIG_ENV, "")
    if env:
        return env
    return DEPLOYED_AGENT_CONFIG if os.path.isfile(DEPLOYED_AGENT_CONFIG) else None


def dialable(address: str) -> str:
    """A listen address as a client dials it: the wildcard means this host's loopback."""
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", ""):
        return f"127.0.0.1:{port}"
    if host in ("[::]", "::"):
        return f"[::1]:{port}"
    return address


def add_node_flags(p: argparse.ArgumentParser, *, agent: bool = True,
                   proxy: bool = True) -> None:
    g = p.add_argument_group("where the node's daemons answer")
    if agent:
        g.add_argument("--config", metavar="FILE", default=None,
                       help=f"the agent's config, for its http_address and capture settings "
                            f"(default: ${CONFIG_ENV}, else {DEPLOYED_AGENT_CONFIG} if "
                            f"present, else the built-in defaults)")
        g.add_argument("--agent", metavar="HOST:PORT", default=None,
                       help=f"the agent's HTTP address (default: the config's http_address, "
                            f"127.0.0.1:{AGENT_HTTP_PORT})")
    if proxy:
        g.add_argument("--proxy-admin", metavar="HOST:PORT",
                       default=f"127.0.0.1:{ADMIN_PORT}",
                       help="the node proxy's admin address (default: %(default)s)")


@dataclass
class Daemon:
    """One daemon's HTTP endpoint: `what` names it in messages ("agent", "node proxy")."""

    what: str
    address: str
    hint: str

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def get(self, path: str, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """(status, body); NotRunning when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotRunning(f"no {self.what} answers at {self.address} "
                             f"({getattr(reason, 'strerror', None) or reason}): is it running? "
                             f"{self.hint}") from None

    def json(self, path: str, timeout: float = TIMEOUT) -> Any:
        status, body = self.get(path, timeout)
        if status != 200:
            raise UserError(f"{self.what} at {self.address}: GET {path}: HTTP {status}: "
                            f"{_message(body)}")
        try:
            return json.loads(body)
        except ValueError:
            raise UserError(f"{self.what} at {self.address}: GET {path}: not JSON "
                            f"(is this the {self.what}'s address?)") from None

    def reachable(self) -> bool:
        try:
            self.get("/healthz" if self.what == "agent" else "/healthz/ready", 1.0)
        except NotRunning:
            return False
        return True


def _message(body: bytes) -> str:
    try:
        d = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:300]
    return str(d.get("error") or d.get("message") or d) if isinstance(d, dict) else str(d)


def agent_of(a: argparse.Namespace) -> Daemon:
    """The agent these flags name: --agent, else the config's http_address."""
    if getattr(a, "agent", None):
        check_flag_address("--agent", a.agent, hostname=True)
        address, where = a.agent, "--agent"
    else:
        address, where = dialable(load_agent_config(a).http_address), "http_address"
    return Daemon("agent", address, f"Start it (`meshnode agent --config FILE`; in a cluster "
                                    f"the meshnode-node DaemonSet), or name its address "
                                    f"(--config FILE, --agent HOST:PORT; used: {where})")


def proxy_of(a: argparse.Namespace) -> Daemon:
    check_flag_address("--proxy-admin", a.proxy_admin, hostname=True)
    return Daemon("node proxy", a.proxy_admin,
                  "Start it (`meshnode proxy --config FILE`; in a cluster the meshnode-proxy "
                  "DaemonSet), or name its admin address (--proxy-admin HOST:PORT)")


def load_agent_config(a: argparse.Namespace) -> Any:
    """The agent config the flags name (cached on the namespace: read once per command)."""
    cfg = getattr(a, "_agent_config", None)
    if cfg is None:
        from agent import config

        path = getattr(a, "config", None) or default_agent_config()
        cfg = config.load(path)
        a._agent_config = cfg
    return cfg
