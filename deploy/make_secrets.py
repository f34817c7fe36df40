#!/usr/bin/env python3
"""Print the Secrets meshnode needs on a cluster, as YAML for `kubectl apply -f -`.

    .venv/bin/python deploy/make_secrets.py --dir ~/mn-ca | kubectl apply -f -
    .venv/bin/python deploy/make_secrets.py --dir ~/mn-ca --node node1 --node node2
    .venv/bin/python deploy/make_secrets.py --dir ~/mn-ca --nodes-from-kubectl | kubectl apply -f -

Secrets (namespace meshnode-system):
  meshnode-controlplane-ca    root-cert.pem, root-key.pem, node-token.key  (control plane only)
  meshnode-controlplane-root  root-cert.pem                                (agents: trust)
  meshnode-node-tokens        <node name>: that node's token               (agents: identity)

Run once per cluster, without nodes, for the Helm chart and the manifests: their agents
authenticate with a projected service-account token, which the control plane checks with
the API server, so a node that joins later needs nothing from here. The node tokens (--node,
--nodes-from-kubectl) are only for a meshnode control plane without an API server (--config;
Helm controlplane.agentCredential=nodeToken), and then every new node needs a run first.

`--dir` keeps the CA root and the token key (0600) so that a later run (a new node) reuses
them: a new root would invalidate every issued certificate, a new key every node token. Keep
that directory as you keep any CA key. Runs with the repository's modules (controlplane.pki,
controlplane.nodeauth): the same code the control plane uses to check what it makes here.
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from controlplane import nodeauth, pki

NAMESPACE = "meshnode-system"


def secret(name: str, data: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/part-of": "meshnode"}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(data.items())},
    }


def kubectl_nodes() -> list[str]:
    out = subprocess.run(["kubectl", "get", "nodes", "-o", "name"], check=True,
                         capture_output=True, text=True).stdout
    return [line.removeprefix("node/") for line in out.split()]


def build(directory: Path, trust_domain: str, nodes: list[str]) -> list[dict[str, object]]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = pki.load_or_create_root(directory / "root-cert.pem", directory / "root-key.pem",
                                   trust_domain)
    key_path = directory / "node-token.key"
    key = nodeauth.load_or_create_key(key_path)
    return [
        secret("meshnode-controlplane-ca", {
            "root-cert.pem": root.cert_pem, "root-key.pem": root.key_pem().decode(),
            "node-token.key": key_path.read_text()}),
        secret("meshnode-controlplane-root", {"root-cert.pem": root.cert_pem}),
    ] + ([secret("meshnode-node-tokens", {n: nodeauth.mint(key, n) + "\n" for n in nodes})]
         if nodes else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, required=True,
                   help="where the CA root and token key are kept (created on first use)")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--node", action="append", default=[],
                   help="a node name (repeatable): make its node token too")
    p.add_argument("--nodes-from-kubectl", action="store_true",
                   help="every node of `kubectl get nodes`")
    a = p.parse_args(argv)
    nodes = list(a.node) + (kubectl_nodes() if a.nodes_from_kubectl else [])
    yaml.safe_dump_all(build(a.dir, a.trust_domain, sorted(set(nodes))), sys.stdout,
                       sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
