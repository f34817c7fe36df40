"""Sidecar -> EgressPolicy: the services a workload imports (`egress[].hosts` per port) and
what happens to destinations outside the registry (`outboundTrafficPolicy`).

Which Sidecar applies, as Istio: one whose workloadSelector matches the workload, else its
namespace's selector-less one (the oldest if several), else the root namespace's
selector-less one, the mesh default (sent as `EgressPolicy(name="")`, key "mesh default";
its "." means the workload's own namespace, as Istio applies it per namespace). An
outboundTrafficPolicy left unset is the mesh's (ALLOW_ANY unless configured), not the root
Sidecar's, as Istio.

Validation as Istio's ValidateSidecar, worded as there. Not applied: `ingress` and
`inboundConnectionPool` (inbound traffic is the node proxy's HBONE), `bind`, `captureMode`
and egress `port.protocol` (capture is by the node agent), `outboundTrafficPolicy.egressProxy`;
each with a warning.
"""

from __future__ import annotations

from typing import Any

from controlplane.ambient import read
from controlplane.traffic import fields
from core.mesh.traffic import EgressHost, EgressListener, EgressPolicy, OutboundMode, labels

MODES = {"REGISTRY_ONLY": OutboundMode.REGISTRY_ONLY, "ALLOW_ANY": OutboundMode.ALLOW_ANY}


def _host(text: str, f: str) -> EgressHost:
    """ValidateNamespaceSlashWildcardHostname."""
    ns, sep, dns = text.partition("/")
    if not sep:
        raise read.Bad(f, "host must be of form namespace/dnsName")
    if not ns:
        raise read.Bad(f, "namespace must not be empty")
    if not dns:
        raise read.Bad(f, "dnsName must not be empty")
    if ns.startswith("~") and ns != "~":
        raise read.Bad(f, f"{text!r}: host exclusions (~namespace) are not supported")
    if dns != "*":
        fields.wildcard_domain(dns, f)
    return EgressHost(ns, dns)


def sidecar(obj: dict[str, Any], root_namespace: str, mesh_mode: OutboundMode,
            warnings: list[str]) -> EgressPolicy:
    ns, name = read.namespace(obj), read.name(obj)
    spec = read.spec(obj)
    ws = spec.get("workloadSelector")
    selector: dict[str, str] = {}
    if ws is not None:
        raw = read.mapping(read.mapping(ws, "spec.workloadSelector").get("labels"),
                           "spec.workloadSelector.labels")
        for k, v in raw.items():
            if not k:
                raise read.Bad("spec.workloadSelector.labels",
                               f'empty key is not supported in selector: "={v}"')
            if "*" in str(k) or "*" in str(v):
                raise read.Bad("spec.workloadSelector.labels",
                               f'wildcard is not supported in selector: "{k}={v}"')
        selector = fields.label_map(raw, "spec.workloadSelector.labels")
        if not selector:
            warnings.append("spec.workloadSelector: sidecar: workload selector specified "
                            "without labels, will be applied to all services in namespace")
    egress = read.items(spec.get("egress"), "spec.egress")
    otp = spec.get("outboundTrafficPolicy")
    if not egress and not read.items(spec.get("ingress"), "spec.ingress") and otp is None \
            and spec.get("inboundConnectionPool") is None:
        raise read.Bad("spec", "sidecar: empty configuration provided")
    for key in ("ingress", "inboundConnectionPool"):
        if spec.get(key) is not None:
            warnings.append(f"spec.{key}: inbound traffic is the node proxy's HBONE "
                            "(ignored)")
    listeners: list[EgressListener] = []
    ports: set[int] = set()
    catch_all = False
    for i, e in enumerate(egress):
        f = f"spec.egress[{i}]"
        e = read.mapping(e, f)
        port = 0
        if e.get("port") is None:
            if catch_all:
                raise read.Bad(f, "sidecar: egress can have only one listener with empty port")
            if i != len(egress) - 1:
                raise read.Bad(f, "sidecar: the egress listener with empty port should be the "
                                  "last listener in the list")
            catch_all = True
        else:
            pm = read.mapping(e.get("port"), f"{f}.port")
            number = pm.get("number")
            if number in (None, 0):
                raise read.Bad(f"{f}.port.number", "sidecar: ports with 0 value must have a "
                                                   "unix domain socket bind address")
            port = read.port(number, f"{f}.port.number")
            if port in ports:
                raise read.Bad(f"{f}.port.number",
                               "sidecar: ports on IP bound listeners must be unique")
            ports.add(port)
        for key in ("bind", "captureMode"):
            if e.get(key) is not None:
                warnings.append(f"{f}.{key}: capture is the node agent's (ignored)")
        hosts = read.strings(e.get("hosts"), f"{f}.hosts")
        if not hosts:
            raise read.Bad(f"{f}.hosts", "sidecar: egress listener must contain at least one "
                                         "host")
        listeners.append(EgressListener(tuple(_host(h, f"{f}.hosts[{j}]")
                                              for j, h in enumerate(hosts)), port))
    mode = mesh_mode
    if otp is not None:
        otp = read.mapping(otp, "spec.outboundTrafficPolicy")
        text = read.string(otp.get("mode"), "spec.outboundTrafficPolicy.mode", "REGISTRY_ONLY")
        if text == "ALLOW_ANY_DYNAMIC_DNS":
            raise read.Bad("spec.outboundTrafficPolicy.mode", "sidecar: ALLOW_ANY_DYNAMIC_DNS "
                           "mode is only supported in MeshConfig, not in Sidecar resource")
        if text not in MODES:
            raise read.Bad("spec.outboundTrafficPolicy.mode", f"unknown mode {text!r}")
        mode = MODES[text]
        if otp.get("egressProxy") is not None:
            if mode != OutboundMode.ALLOW_ANY:
                raise read.Bad("spec.outboundTrafficPolicy.egressProxy", "sidecar: "
                               "egress_proxy must be set only with ALLOW_ANY "
                               "outbound_traffic_policy mode")
            warnings.append("spec.outboundTrafficPolicy.egressProxy: not applied (unknown "
                            "destinations pass through to their original address)")
    mesh_default = ns == root_namespace and ws is None
    return EgressPolicy(namespace="" if mesh_default else ns,
                        name="" if mesh_default else name, mode=mode,
                        listeners=tuple(listeners), selector=labels(selector))
