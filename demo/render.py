"""The report's sections and the checks behind the verdict."""

from __future__ import annotations

from typing import Protocol

from demo import report
from demo.containerd import CTR_NAMESPACE, Containerd
from demo.mesh import DENIED, PODS, POLICY, PROXY_ADMIN, NodeDaemons, pod
from demo.traffic import Flow


class Demo(Protocol):
    """What the report reads of a run (demo/run.py's Demo, which calls render)."""

    backend: str
    flavour: str
    nodes: dict[str, NodeDaemons]
    runtimes: dict[str, Containerd]
    flows: list[Flow]

    def env(self, node: str) -> dict[str, str]: ...


def _section(title: str) -> None:
    print(f"\n== {title}")


def _indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.rstrip().splitlines())


def _proxy(view: object) -> str:
    """The proxy's view of a pod, as the `meshnode pods` table words it."""
    if isinstance(view, dict) and "listeners" in view:
        return f"serving, {view.get('connections', 0)} conns"
    return str(view or "-")


def render(d: Demo) -> bool:
    _section("pods (meshnode pods -o json, on each node)")
    # ctr passes no K8S_POD_* args, so the agent knows pods by container and IP; the
    # workload name comes from the example mesh, by IP.
    by_ip = {p.ip: p.name for p in PODS}
    names = {**by_ip, **{f"{CTR_NAMESPACE}-{p.name}": p.name for p in PODS}}
    print(f"  {'NODE':<6} {'WORKLOAD':<9} {'IP':<13} {'STATE':<9} {'BACKEND':<9} "
          f"{'PROXY':<17} CONTAINER")
    captured: set[str] = set()
    for name, nd in d.nodes.items():
        out = report.meshnode(["pods", "--config", str(nd.agent_config), "--proxy-admin",
                               PROXY_ADMIN, "-o", "json"], nd.agent.netns)
        for rec in report.json_list(out):
            ips = [ip.split("/")[0] for ip in rec.get("ips", [])]
            wl = next((by_ip[ip] for ip in ips if ip in by_ip), "?")
            if rec.get("state") == "enrolled":
                captured.add(wl)
            print(f"  {name:<6} {wl:<9} {','.join(ips):<13} {rec.get('state', ''):<9} "
                  f"{rec.get('backend', ''):<9} {_proxy(rec.get('proxy')):<17} "
                  f"{rec.get('container_id', '')}")

    _section("traffic")
    for f in d.flows:
        mark = "ok  " if f.as_expected else "FAIL"
        got = f"delivered, {f.bytes} B back" if f.ok else f"refused ({f.detail or 'error'})"
        print(f"  [{mark}] {f.what}: {f.src} -> {f.url}: {got}")

    _section("connections the proxies saw (access logs)")
    logs = {name: report.access_log(nd.proxy.log) for name, nd in d.nodes.items()}
    for name, entries in logs.items():
        for c in entries:
            print("  " + report.connection_line(name, c, names))

    _section("denied by policy")
    denied = [c for c in logs["node2"] if c.get("status") == 401]
    for c in denied:
        print(f"  node2 inbound {c['source_principal']} -> {c['destination_principal']}: "
              f"{c.get('authz') or 'denied'} by {c.get('policy')}")
    n_denied = report.metric(d.nodes["node2"].proxy, "meshnode_proxy_authz_denied_total",
                             policy=POLICY)
    print(f"  meshnode_proxy_authz_denied_total{{policy=\"{POLICY}\"}} on node2: {n_denied:g}")

    rt = d.runtimes["node1"]
    fe = rt.pods["frontend"]
    args = ["redirect", "show", "--netns", fe.netns, "--backend", d.backend]
    if d.backend == "iptables":
        args += ["--iptables-flavour", d.flavour]
    _section(f"frontend's redirect rules: meshnode {' '.join(args)}")
    print(_indent(report.meshnode(args, d.nodes["node1"].agent.netns,
                                  env=report.env_with(d.env("node1")))), end="")

    node2_in = [c for c in logs["node2"] if c.get("transport") == "hbone"
                and c.get("status") in (None, 200)]
    checks = {
        "every connection behaved as expected": all(f.as_expected for f in d.flows),
        "node2 saw frontend's identity over mTLS": any(
            c["source_principal"] == pod("frontend").identity for c in node2_in),
        "the policy denied batch on node2": any(
            c["source_principal"] == pod(DENIED).identity for c in denied) and n_denied >= 1,
        "every pod enrolled (captured, proxy serving)": captured == {p.name for p in PODS},
    }
    failed = [k for k, v in checks.items() if not v]
    if failed:
        print("\n  failed checks: " + "; ".join(failed))
    return not failed
