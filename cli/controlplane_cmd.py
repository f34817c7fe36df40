"""`meshnode controlplane`: run the control plane (ADS + CA over TLS) from one source: Kubernetes
and Istio manifests (`--config PATH`), the API server (`--kubeconfig FILE`, or the pod's
service account when run in a pod with neither)."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cli import daemon

if TYPE_CHECKING:
    from controlplane.server import ControlPlaneConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("controlplane", help="run the standalone control plane (ADS + CA)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="PATH",
                     help="a file or directory of Kubernetes and Istio manifests (as `kubectl "
                          "apply -f` takes them); watched for edits")
    src.add_argument("--kubeconfig", metavar="FILE",
                     help="list and watch the API server this kubeconfig names (default in a "
                          "pod: its service account)")
    p.add_argument("--root-namespace", default="istio-system", metavar="NS",
                   help="where mesh-wide AuthorizationPolicy and PeerAuthentication live "
                        "(Istio's rootNamespace; default istio-system)")
    p.add_argument("--cluster-id", default="Kubernetes", metavar="ID",
                   help="this cluster's id, the first part of every workload uid (istiod's "
                        "--clusterID; default Kubernetes)")
    p.add_argument("--outbound-traffic-policy", choices=("ALLOW_ANY", "REGISTRY_ONLY"),
                   default="ALLOW_ANY", metavar="MODE",
                   help="the mesh-wide outboundTrafficPolicy (Istio's MeshConfig "
                        "outboundTrafficPolicy.mode): ALLOW_ANY passes connections to "
                        "destinations outside the registry through, REGISTRY_ONLY refuses "
                        "them; a Sidecar's own outboundTrafficPolicy wins (default ALLOW_ANY)")
    p.add_argument("--address", default="0.0.0.0:15012",
                   help="listen address for ADS and the CA, TLS (default 0.0.0.0:15012)")
    p.add_argument("--metrics-address", default="127.0.0.1:15014", metavar="HOST:PORT",
                   help="plain-HTTP /metrics, /healthz, /readyz (default 127.0.0.1:15014, "
                        "istiod's monitoring port; '' turns it off)")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--root-cert", metavar="PEM", help="CA root certificate (with --root-key)")
    p.add_argument("--root-key", metavar="PEM", help="CA root private key (with --root-cert)")
    p.add_argument("--state-dir", default="/var/lib/meshnode/controlplane",
                   help="where a generated root and the node token key are kept")
    p.add_argument("--token-key", metavar="FILE",
                   help="node token key (default <state-dir>/node-token.key; made if absent)")
    p.add_argument("--trusted-node-account", action="append", metavar="NS/SA",
                   help="with an API-server source: a service account whose Kubernetes tokens "
                        "(audience istio-ca) are node agents', issued the identities of the "
                        "pods on their own pod's node (repeatable; istiod's "
                        "CA_TRUSTED_NODE_ACCOUNTS; default meshnode-system/meshnode-node)")
    p.add_argument("--server-name", action="append", metavar="NAME",
                   help="DNS name or IP in the server certificate (repeatable)")
    p.add_argument("--max-cert-ttl", type=int, default=7 * 86400, metavar="SECONDS")
    p.add_argument("--print-node-token", metavar="NODE",
                   help="print the node token for NODE and exit (nothing is served)")
    p.add_argument("--check", action="store_true",
                   help="read the source once, validate every object and its conversion, "
                        "and exit (0: good; else each problem as `Kind ns/name: field: "
                        "reason`, exit 2)")
    p.add_argument("--drain-seconds", type=float, default=5.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT: how long in-flight calls get to finish before the "
                        "process exits (default 5; ADS streams are ended at once)")
    daemon.add_log_flags(p)
    p.set_defaults(handler=cmd_controlplane)


def cmd_controlplane(a: argparse.Namespace) -> int:
    from cli.errors import UserError, check_flag_address
    from controlplane import nodeauth, pki
    from controlplane.ambient.options import Options
    from controlplane.auth import DEFAULT_TRUSTED_NODE_ACCOUNTS, parse_account
    from controlplane.server import (
        DEFAULT_SERVER_NAMES,
        ControlPlane,
        ControlPlaneConfig,
        SourceError,
    )
    from core.k8s.client import in_cluster
    from core.mesh.traffic import OutboundMode

    # Before anything is read or bound. Port 0 (any free port) is fine: the bound ports are
    # logged in `controlplane_serving`.
    check_flag_address("--address", a.address, port_zero=True)
    if a.metrics_address:
        check_flag_address("--metrics-address", a.metrics_address, port_zero=True)
    if not 0 <= a.drain_seconds <= 3600:
        raise UserError(f"--drain-seconds: {a.drain_seconds:g} out of range 0-3600")
    trusted = a.trusted_node_account or list(DEFAULT_TRUSTED_NODE_ACCOUNTS)
    for account in trusted:
        try:
            parse_account(account)
        except ValueError as exc:
            raise UserError(f"--trusted-node-account: {exc}") from None
    chosen_in_cluster = not (a.config or a.kubeconfig)
    if chosen_in_cluster and not a.print_node_token and not in_cluster():
        raise UserError("no source: give --config PATH or --kubeconfig FILE (with neither, "
                        "the control plane must run in a pod with a service account token)")
    cfg = ControlPlaneConfig(
        config=Path(a.config) if a.config else None,
        kubeconfig=a.kubeconfig, in_cluster=chosen_in_cluster and not a.print_node_token,
        ambient=Options(cluster_id=a.cluster_id, root_namespace=a.root_namespace,
                        outbound_traffic_policy=OutboundMode[a.outbound_traffic_policy]),
        address=a.address, trust_domain=a.trust_domain,
        root_cert=Path(a.root_cert) if a.root_cert else None,
        root_key=Path(a.root_key) if a.root_key else None,
        state_dir=Path(a.state_dir), token_key=Path(a.token_key) if a.token_key else None,
        server_names=a.server_name or list(DEFAULT_SERVER_NAMES),
        trusted_node_accounts=trusted,
        max_cert_ttl=datetime.timedelta(seconds=a.max_cert_ttl),
        metrics_address=a.metrics_address or None)
    try:
        if a.print_node_token:
            print(nodeauth.mint(nodeauth.load_or_create_key(cfg.token_key_path),
                                a.print_node_token))
            return 0
        if a.check:
            return _check(cfg)
        cp = ControlPlane(cfg)
    except (SourceError, pki.PkiError) as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:  # a malformed token key file, a bad --metrics-address
        raise UserError(str(exc)) from None
    try:
        return daemon.run(cp.run(drain_seconds=a.drain_seconds), a.log_level, a.log_format)
    except SourceError as exc:
        raise UserError(str(exc)) from None


def _check(cfg: ControlPlaneConfig) -> int:
    """`--check`: print each problem of the source's objects; exit 2 if there is any."""
    import asyncio

    from cli.errors import UserError
    from controlplane.check import CheckError, check_cluster, check_config
    from core import logs

    # The problems are the output; the conversion's own log lines say the same again.
    logs.configure("error")
    try:
        problems = (check_config(cfg.config, cfg.ambient) if cfg.config is not None
                    else asyncio.run(check_cluster(cfg.kubeconfig or "", cfg.ambient)))
    except CheckError as exc:
        raise UserError(str(exc)) from None
    for line in problems:
        print(line)
    return 2 if problems else 0
