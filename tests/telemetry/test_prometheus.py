# ruff: noqa: E501 - the dashboards' and Kiali's PromQL is kept verbatim, one query a line
"""A real Prometheus (Debian's `prometheus` package) scrapes a running two-node mesh, and the
PromQL of Istio's standard dashboards and of Kiali's graph returns the series and values of
the traffic this test sent.

The lab is tests/mesh's: a control plane in its own netns, node1 and node2 each with an agent
and a node proxy (testing/mesh_topology.py, testing/mesh_procs.py). The pods are Deployment
pods, as the API server makes them (generateName, a ReplicaSet owner, pod-template-hash), so
the telemetry names their Deployments: `sleep` (app sleep, version v1) on node1 calls the
service `echo` (VIP, port 80 -> 8080) and echo's pod IP; `echo` (app echo, version v2) on
node2 answers each connection with "echo-v2\n". Every byte goes over HBONE through both
proxies. The agents and proxies listen for Prometheus on their default metrics addresses
(0.0.0.0:15022 and 0.0.0.0:15020, in their node's netns); Prometheus runs in the control
plane's netns (127.0.0.1:9090 there), scraping every second the two proxies, the two agents
and the control plane (127.0.0.1:15014).

Values. The series exist before the measured traffic (a warm-up connection of each kind),
and the queries are evaluated at a scrape of the target (`t_k`), with their range set to
reach back exactly to a scrape before the traffic (`t_j`; Prometheus 2.42 includes a sample
at the range's start, so `rate` does not extrapolate). Then:
- a `sum` of counters is the exact total the proxies counted (warm-up included);
- `rate(x[W])` is exactly (bytes of the test) / W;
- `irate`, which sees only the last two samples, is evaluated at every scrape in (t_j, t_k]
  and integrated over the scrape intervals: exactly the bytes of the test (Istio's panels
  round to 0.001 per step).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.netns import inside
from testing import mesh_manifests as k8s
from testing.agent_harness import stop_process
from testing.lab import Lab, Node
from testing.mesh_procs import ControlPlaneProc, MeshNode, NameServer, certs_of, wait_for
from testing.mesh_stack import MeshStack
from testing.mesh_topology import VIP, Topology, build
from tests.mesh.apps import exchange, outcome, sha
from tests.telemetry.test_dashboards import DASHBOARDS, GRAFANA_VARS, dashboard_queries

pytestmark = pytest.mark.kernel  # network namespaces: root

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"
ECHO_HOST = "echo.default.svc.cluster.local"
SLEEP_POD, ECHO_POD = "sleep-6d4c8b7f9-x7k2p", "echo-5f7b9d8c4-q9z8w"
REPLY = b"echo-v2\n"
PROM_PORT = 9090
NODE1, NODE2 = "198.18.40.2", "198.18.42.2"  # the nodes as the control plane's netns sees them
PROXY = {"node1": f"{NODE1}:15020", "node2": f"{NODE2}:15020"}

# The traffic: (connections, bytes each) to the service VIP and to echo's pod IP.
WARMUP = {"vip": (1, 1_000), "pod": (1, 1_000)}
TEST = {"vip": (3, 100_000), "pod": (2, 30_000)}


def deployment_pod(name: str, ip: str, node: str, app: str, version: str,
                   ports: list[int] | None = None) -> dict[str, Any]:
    """A pod as a Deployment's ReplicaSet makes it."""
    rs = name.rsplit("-", 1)[0]
    pod_hash = rs.rsplit("-", 1)[1]
    p = k8s.pod(name, ip, node, service_account=app, ports=ports or [],
                labels={"app": app, "version": version, "pod-template-hash": pod_hash})
    p["metadata"]["generateName"] = rs + "-"
    p["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                         "name": rs, "uid": f"uid-{rs}", "controller": True,
                                         "blockOwnerDeletion": True}]
    return p


class Prometheus:
    """`prometheus` inside a netns, with a generated config; stopped by its PID, its data
    directory removed."""

    def __init__(self, workdir: Path, netns: Node, targets: dict[str, list[str]]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus not found: run `make setup` (Debian's package)"
        self.binary: str = binary
        self.workdir, self.netns = workdir, netns
        workdir.mkdir(parents=True, exist_ok=True)
        self.data = workdir / "data"
        self.config = workdir / "prometheus.yml"
        self.log = workdir / "prometheus.log"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": t}]}
                               for job, t in targets.items()]}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with open(self.log, "ab") as log, inside(self.netns.path):
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.data}",
                 f"--web.listen-address=127.0.0.1:{PROM_PORT}",
                 "--storage.tsdb.retention.time=1d"],
                stdout=log, stderr=log, cwd=self.workdir)
        wait_for(lambda: self._ready(), 30, "prometheus to be ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
        try:
            with inside(self.netns.path), urllib.request.urlopen(
                    f"http://127.0.0.1:{PROM_PORT}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, timeout=20)
        self.proc = None
        shutil.rmtree(self.data, ignore_errors=True)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{PROM_PORT}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with inside(self.netns.path), urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result of an instant query (a vector), at `at` (seconds) or now."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str, at: float | None = None) -> float | None:
        r = self.query(expr, at)
        assert len(r) <= 1, r
        return float(r[0]["value"][1]) if r else None

    def scrapes(self, target: str) -> list[float]:
        """The timestamps (seconds, ms precision) of the target's successful scrapes in the
        last 10 minutes (a failed one leaves no sample of its series: irate skips it)."""
        data = self.api("query", query=f'up{{instance="{target}"}}[10m]')
        (series,) = data["result"]
        return [float(ts) for ts, up in series["values"] if up == "1"]


@dataclass
class Mesh:
    t: Topology
    cp: ControlPlaneProc
    n1: MeshNode
    n2: MeshNode
    prom: Prometheus
    # Per node: the scrape before the measured traffic (t_j) and one after it (t_k).
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)

    def send(self, traffic: dict[str, tuple[int, int]]) -> None:
        for kind, (n, size) in traffic.items():
            dst = (VIP, 80) if kind == "vip" else (self.t.b.ip4, 8080)
            for _ in range(n):
                assert exchange(self.t.a, *dst, b"x" * size) == sha(REPLY), kind

    def wait_counted(self, connections: int) -> None:
        """Until Prometheus has scraped both proxies with every connection closed."""
        for reporter in ("source", "destination"):
            expr = f'sum(istio_tcp_connections_closed_total{{reporter="{reporter}"}})'
            wait_for(lambda e=expr: self.prom.value(e) == connections, 20,  # type: ignore[misc]
                     f"{connections} closed connections (reporter {reporter}) in Prometheus",
                     step=0.2)

    def last_scrape(self, node: str, after: float = 0.0) -> float:
        """The latest scrape of the node's proxy, waiting for one later than `after`."""
        return float(wait_for(lambda: next((s for s in reversed(self.prom.scrapes(PROXY[node]))
                                            if s > after), None), 10, f"a scrape of {node}",
                              step=0.2))


def totals(*traffics: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Connections and bytes of these phases, per kind ("vip", "pod") and both."""
    out: dict[str, int] = {}
    for tr in traffics:
        for kind, (n, size) in tr.items():
            for key, v in ((f"{kind}_conns", n), (f"{kind}_received", n * size),
                           (f"{kind}_sent", n * len(REPLY))):
                out[key] = out.get(key, 0) + v
    for what in ("conns", "received", "sent"):
        out[what] = out[f"vip_{what}"] + out[f"pod_{what}"]
    return out


def _default_metrics_listeners(mn: MeshNode) -> None:
    """The daemons' default metrics listeners (0.0.0.0:15022, 0.0.0.0:15020), in the
    node's netns, instead of the harness's loopback ones."""
    for path in (mn.agent.config, mn.proxy.config):
        cfg = yaml.safe_load(path.read_text())
        del cfg["metrics_address"]
        path.write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("telemetry")
    try:
        with Lab("tm") as lab, MeshStack(tmp) as s:
            t = build(lab)
            cp = s.control_plane(
                t.cp, *k8s.two_nodes(),
                k8s.service("echo", VIP, [(80, 8080)], selector={"app": "echo"}),
                deployment_pod(SLEEP_POD, t.a.ip4, "node1", "sleep", "v1"),
                deployment_pod(ECHO_POD, t.b.ip4, "node2", "echo", "v2", [8080]))
            n1, n2 = (s.node(name, where, cp, _default_metrics_listeners,
                             cert_ttl_seconds=86400)
                      for name, where in (("node1", t.node1), ("node2", t.node2)))
            s.enroll(n1, t.a, SLEEP_POD)
            s.enroll(n2, t.b, ECHO_POD)
            s.keep(NameServer(t.b, "echo-v2", 8080)).start()
            wait_for(lambda: SLEEP_ID in certs_of(n1) and ECHO_ID in certs_of(n2), 15,
                     "both proxies to hold their pod's certificate")
            prom = s.keep(Prometheus(tmp / "prometheus", t.cp, {
                "meshnode-proxy": [PROXY["node1"], PROXY["node2"]],
                "meshnode-agent": [f"{NODE1}:15022", f"{NODE2}:15022"],
                "meshnode-controlplane": ["127.0.0.1:15014"]}))
            prom.start()
            m = Mesh(t, cp, n1, n2, prom)
            # Warm-up: every series the measured traffic moves exists before it, at a known
            # value, in at least two scrapes.
            m.send(WARMUP)
            m.wait_counted(totals(WARMUP)["conns"])
            for node in PROXY:
                m.before[node] = m.last_scrape(node, m.last_scrape(node))
            m.send(TEST)
            m.wait_counted(totals(WARMUP, TEST)["conns"])
            for node in PROXY:
                m.after[node] = m.last_scrape(node)
            yield m
    finally:
        shutil.rmtree(tmp / "prometheus", ignore_errors=True)


# ---- the queries, as data ----------------------------------------------------------------

ISTIO = "istio/istio@86c9f01f manifests/addons/dashboards"
KIALI = "kiali/kiali@d733a096"
# Kiali's TCP graph groups by these (graph/telemetry/istio/istio.go, buildNamespaceTrafficMap).
KIALI_TCP_GROUP_BY = ("app,source_cluster,source_workload_namespace,source_workload,"
                      "source_canonical_service,source_canonical_revision,destination_cluster,"
                      "destination_service_namespace,destination_service,"
                      "destination_service_name,destination_workload_namespace,"
                      "destination_workload,destination_canonical_service,"
                      "destination_canonical_revision,response_flags")
# ...and its security-policy appender by these (appender/security_policy.go).
KIALI_SECURITY_GROUP_BY = ("source_cluster,source_workload_namespace,source_workload,"
                           "source_canonical_service,source_canonical_revision,"
                           "source_principal,destination_cluster,"
                           "destination_service_namespace,destination_service_name,"
                           "destination_workload_namespace,destination_workload,"
                           "destination_canonical_service,destination_canonical_revision,"
                           "destination_principal,connection_security_policy")

Series = frozenset[tuple[str, str]]


def S(**labels: str) -> Series:  # a series' label set, as the data reads it
    return frozenset(labels.items())


SLEEP = dict(source_workload="sleep", source_workload_namespace="default")
ECHO = dict(destination_workload="echo", destination_workload_namespace="default")
KIALI_SRC = dict(source_cluster="Kubernetes", **SLEEP, source_canonical_service="sleep",
                 source_canonical_revision="v1")
KIALI_DST = dict(destination_cluster="Kubernetes", **ECHO,
                 destination_canonical_service="echo", destination_canonical_revision="v2")
VIA_SERVICE = dict(destination_service=ECHO_HOST, destination_service_name="echo",
                   destination_service_namespace="default")
VIA_POD_IP = dict(destination_service="unknown", destination_service_name="unknown",
                  destination_service_namespace="unknown")


@dataclass(frozen=True)
class Query:
    source: str             # where the PromQL comes from
    expr: str               # as it is there; $variables are the dashboard's / Kiali's
    node: str               # the proxy whose series it reads: node1 (reporter source), node2
    kind: str               # "irate", "rate" or "sum" (see the module docstring)
    want: dict[Series, str]  # series -> the total it must show (a key of `totals`), or "none"
    vars: dict[str, str] = field(default_factory=dict)


def _w(**v: str) -> dict[str, str]:
    """Values for the Istio dashboards' variables: the defaults (reporter `destination`,
    every source and service) with the given ones."""
    return {"qrep": "destination", "namespace": "default", "srcwl": ".*", "srcns": ".*",
            "dstsvc": ".*", "dstwl": ".*", "dstns": ".*", **v}


WD = f"{ISTIO}/istio-workload-dashboard.json"
SD = f"{ISTIO}/istio-service-dashboard.json"
MD = f"{ISTIO}/istio-mesh-dashboard.gen.json"
KG = f"{KIALI} graph/telemetry/istio/istio.go buildNamespaceTrafficMap, TCP"
KS = f"{KIALI} graph/telemetry/istio/appender/security_policy.go"

QUERIES: list[Query] = [
    # -- Istio Workload dashboard: General row (workload=echo: the server; sleep: the client)
    Query(f"{WD}: TCP Server Traffic",
          'sum(irate(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload"}[$__rate_interval])) + sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload"}[$__rate_interval]))',
          "node2", "irate", {S(): "sent+received"}, _w(workload="echo")),
    Query(f"{WD}: TCP Client Traffic",
          'sum(irate(istio_tcp_sent_bytes_total{reporter=~"$qrep", source_workload_namespace=~"$namespace", source_workload=~"$workload"}[$__rate_interval])) + sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", source_workload_namespace=~"$namespace", source_workload=~"$workload"}[$__rate_interval]))',
          "node2", "irate", {S(): "sent+received"}, _w(workload="sleep")),
    # -- Inbound Workloads row (workload=echo)
    Query(f"{WD}: Bytes Received from Incoming TCP Connection (mTLS)",
          'round(sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", connection_security_policy="mutual_tls", destination_workload_namespace=~"$namespace", destination_workload=~"$workload", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
          "node2", "irate", {S(**SLEEP): "received"}, _w(workload="echo")),
    Query(f"{WD}: Bytes Received from Incoming TCP Connection (plaintext)",
          'round(sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_workload_namespace=~"$namespace", destination_workload=~"$workload", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
          "node2", "irate", {}, _w(workload="echo")),
    Query(f"{WD}: Bytes Sent to Incoming TCP Connection (mTLS)",
          'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls", reporter=~"$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
          "node2", "irate", {S(**SLEEP): "sent"}, _w(workload="echo")),
    # -- Outbound Services row (workload=sleep; reporter="source": node1)
    Query(f"{WD}: Bytes Sent on Outgoing TCP Connection (mTLS)",
          'round(sum(irate(istio_tcp_received_bytes_total{connection_security_policy="mutual_tls", reporter="source", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[$__rate_interval])) by (destination_service), 0.001)',
          "node1", "irate", {S(destination_service=ECHO_HOST): "vip_received",
                             S(destination_service="unknown"): "pod_received"},
          _w(workload="sleep")),
    Query(f"{WD}: Bytes Received from Outgoing TCP Connection (mTLS)",
          'round(sum(irate(istio_tcp_sent_bytes_total{reporter="source", connection_security_policy="mutual_tls", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[$__rate_interval])) by (destination_service), 0.001)',
          "node1", "irate", {S(destination_service=ECHO_HOST): "vip_sent",
                             S(destination_service="unknown"): "pod_sent"},
          _w(workload="sleep")),
    Query(f"{WD}: Bytes Received from Outgoing TCP Connection (plaintext)",
          'round(sum(irate(istio_tcp_sent_bytes_total{reporter="source", connection_security_policy!="mutual_tls", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[$__rate_interval])) by (destination_service), 0.001)',
          "node1", "irate", {}, _w(workload="sleep")),
    # -- its variables (query_result(...) in Grafana; the PromQL inside): sums of counters
    Query(f"{WD}: variable srcwl",
          'sum(istio_requests_total{reporter=~"$qrep", destination_workload="$workload", destination_workload_namespace=~"$namespace", source_workload_namespace=~"$srcns"}) by (source_workload) or sum(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_workload="$workload", destination_workload_namespace=~"$namespace", source_workload_namespace=~"$srcns"}) by (source_workload)',
          "node2", "sum", {S(source_workload="sleep"): "sent"}, _w(workload="echo")),
    Query(f"{WD}: variable dstsvc",
          'sum(istio_requests_total{reporter="source", source_workload=~"$workload", source_workload_namespace=~"$namespace"}) by (destination_service) or sum(istio_tcp_sent_bytes_total{reporter="source", source_workload=~"$workload", source_workload_namespace=~"$namespace"}) by (destination_service)',
          "node1", "sum", {S(destination_service=ECHO_HOST): "vip_sent",
                           S(destination_service="unknown"): "pod_sent"},
          _w(workload="sleep")),
    # -- Istio Service dashboard (service=echo)
    Query(f"{SD}: TCP Received Bytes",
          'sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", destination_service="$service"}[$__rate_interval]))',
          "node2", "irate", {S(): "received"}, _w(service=ECHO_HOST)),
    Query(f"{SD}: TCP Sent Bytes",
          'sum(irate(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_service="$service"}[$__rate_interval]))',
          "node2", "irate", {S(): "sent"}, _w(service=ECHO_HOST)),
    Query(f"{SD}: Client Workloads, Bytes Received from Incoming TCP Connection (mTLS)",
          'round(sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", connection_security_policy="mutual_tls", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
          "node2", "irate", {S(**SLEEP): "received"}, _w(service=ECHO_HOST)),
    Query(f"{SD}: Client Workloads, Bytes Sent to Incoming TCP Connection (mTLS)",
          'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls", reporter=~"$qrep", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)',
          "node2", "irate", {S(**SLEEP): "sent"}, _w(service=ECHO_HOST)),
    Query(f"{SD}: Service Workloads, Bytes Received from Incoming TCP Connection (mTLS)",
          'round(sum(irate(istio_tcp_received_bytes_total{reporter="destination", connection_security_policy="mutual_tls", destination_service="$service", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace), 0.001)',
          "node2", "irate", {S(**ECHO): "received"}, _w(service=ECHO_HOST)),
    Query(f"{SD}: Service Workloads, Bytes Sent to Incoming TCP Connection (mTLS)",
          'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls", reporter="destination", destination_service="$service", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace), 0.001)',
          "node2", "irate", {S(**ECHO): "sent"}, _w(service=ECHO_HOST)),
    # -- Istio Mesh dashboard: TCP Workloads (reporter source|waypoint: node1)
    Query(f"{MD}: TCP Workloads (received)",
          'label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (rate(istio_tcp_received_bytes_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")',
          "node1", "rate",
          {S(**ECHO, destination_service=ECHO_HOST, destination_workload_var="echo.default"):
           "vip_received",
           S(**ECHO, destination_service="unknown", destination_workload_var="echo.default"):
           "pod_received"}),
    Query(f"{MD}: TCP Workloads (sent)",
          'label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (rate(istio_tcp_sent_bytes_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")',
          "node1", "rate",
          {S(**ECHO, destination_service=ECHO_HOST, destination_workload_var="echo.default"):
           "vip_sent",
           S(**ECHO, destination_service="unknown", destination_workload_var="echo.default"):
           "pod_sent"}),
    # -- Kiali's graph, TCP traffic of namespace default (rates "total": both metrics; the
    # app=... fragment is empty for ambient "total"). Query 0: unserviced incoming traffic.
    *(Query(f"{KG} query 0 ({metric})",
            f'sum(rate({metric}{{reporter="source",source_workload_namespace!="$namespace",destination_workload_namespace="unknown",destination_workload="unknown",destination_service=~"^.+\\\\.$namespace\\\\..+$"}} [$duration])) by ({KIALI_TCP_GROUP_BY}) > 0',
            "node1", "rate", {}, {"namespace": "default"})
      for metric in ("istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total")),
    # Query 1: incoming, destination telemetry.
    *(Query(f"{KG} query 1 ({metric})",
            f'sum(rate({metric}{{reporter="destination",destination_workload_namespace="$namespace"}} [$duration])) by ({KIALI_TCP_GROUP_BY}) > 0',
            "node2", "rate",
            {S(**KIALI_SRC, **KIALI_DST, **VIA_SERVICE, response_flags="-"): total},
            {"namespace": "default"})
      for metric, total in (("istio_tcp_received_bytes_total", "received"),
                            ("istio_tcp_sent_bytes_total", "sent"))),
    # Query 2: outgoing, source telemetry: the service the client dialled, or none.
    *(Query(f"{KG} query 2 ({metric})",
            f'sum(rate({metric}{{reporter="source",source_workload_namespace="$namespace"}} [$duration])) by ({KIALI_TCP_GROUP_BY}) > 0',
            "node1", "rate",
            {S(**KIALI_SRC, **KIALI_DST, **VIA_SERVICE, response_flags="-"): f"vip_{total}",
             S(**KIALI_SRC, **KIALI_DST, **VIA_POD_IP, response_flags="-"): f"pod_{total}"},
            {"namespace": "default"})
      for metric, total in (("istio_tcp_received_bytes_total", "received"),
                            ("istio_tcp_sent_bytes_total", "sent"))),
    # The ambient-only incoming query (from other namespaces): none here.
    Query(f"{KG} ambient query 1",
          'sum(rate(istio_tcp_received_bytes_total{reporter="source",source_workload_namespace!="$namespace",destination_workload_namespace="$namespace"} [$duration])) by (' + KIALI_TCP_GROUP_BY + ') > 0',
          "node1", "rate", {}, {"namespace": "default"}),
    # Kiali's mTLS lock on the edge: destination telemetry with principals and the policy.
    Query(f"{KS} query 2 (tcp sent)",
          'sum(rate(istio_tcp_sent_bytes_total{reporter="destination",source_workload_namespace="$namespace"}[$duration])) by (' + KIALI_SECURITY_GROUP_BY + ') > 0',
          "node2", "rate",
          {S(**KIALI_SRC, source_principal=SLEEP_ID, **KIALI_DST,
             destination_service_namespace="default", destination_service_name="echo",
             destination_principal=ECHO_ID, connection_security_policy="mutual_tls"): "sent"},
          {"namespace": "default"}),
]


def _expand(q: Query, window_ms: int) -> str:
    expr = q.expr.replace("$__rate_interval", f"{window_ms}ms").replace(
        "$duration", f"{window_ms}ms")
    for name, value in sorted(q.vars.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${name}", value)
    assert not re.search(r"\$[A-Za-z_]", expr), expr  # every variable has a value
    return expr


def _series(r: dict[str, Any]) -> Series:
    return frozenset(r["metric"].items())


def measured(m: Mesh, q: Query) -> dict[Series, float]:
    """What the query says about the test's traffic (see the module docstring)."""
    t_j, t_k = m.before[q.node], m.after[q.node]
    window = round((t_k - t_j) * 1000)
    expr = _expand(q, window)
    if q.kind == "sum":
        return {_series(r): float(r["value"][1]) for r in m.prom.query(expr, t_k)}
    if q.kind == "rate":
        return {_series(r): float(r["value"][1]) * window / 1000
                for r in m.prom.query(expr, t_k)}
    assert q.kind == "irate"
    scrapes = [s for s in m.prom.scrapes(PROXY[q.node]) if t_j <= s <= t_k]
    assert scrapes[0] == t_j and scrapes[-1] == t_k, (scrapes, t_j, t_k)
    got: dict[Series, float] = {}
    for prev, at in itertools.pairwise(scrapes):
        for r in m.prom.query(expr, at):
            got[_series(r)] = got.get(_series(r), 0.0) + float(r["value"][1]) * (at - prev)
    return got


def expected(q: Query) -> dict[Series, float]:
    test, everything = totals(TEST), totals(WARMUP, TEST)
    counts = everything if q.kind == "sum" else test

    def value(name: str) -> float:
        return float(sum(counts[part] for part in name.split("+")))

    return {series: value(name) for series, name in q.want.items()}


@pytest.mark.parametrize("q", QUERIES, ids=lambda q: q.source.split(" ", 1)[1])
def test_istio_and_kiali_queries_see_the_traffic(mesh: Mesh, q: Query) -> None:
    got, want = measured(mesh, q), expected(q)
    assert set(got) == set(want), f"{q.source}: series {sorted(map(sorted, got))}"
    for series, value in want.items():
        # irate's integral also carries the scrapes' millisecond timestamps (Prometheus
        # stores ms) through each step: about 1e-7 of the total, far below a byte's share.
        tolerance = 1e-6 * max(value, 1) + (0.01 if q.kind == "irate" else 0.0)
        assert abs(got[series] - value) <= tolerance, (q.source, dict(series), got[series],
                                                       value)


def test_the_counters_are_exact(mesh: Mesh) -> None:
    """The raw series behind the queries: connections and bytes per reporter and path."""
    everything = totals(WARMUP, TEST)
    p = mesh.prom
    for reporter, by_path in (("source", {ECHO_HOST: "vip", "unknown": "pod"}),
                              ("destination", {ECHO_HOST: None})):
        for service, kind in by_path.items():
            sel = f'reporter="{reporter}", destination_service="{service}"'
            pre = f"{kind}_" if kind else ""
            assert p.value(f"sum(istio_tcp_connections_opened_total{{{sel}}})") == \
                everything[f"{pre}conns"]
            assert p.value(f'sum(istio_tcp_connections_closed_total{{{sel}, '
                           f'response_flags="-"}})') == everything[f"{pre}conns"]
            assert p.value(f"sum(istio_tcp_received_bytes_total{{{sel}}})") == \
                everything[f"{pre}received"]
            assert p.value(f"sum(istio_tcp_sent_bytes_total{{{sel}}})") == \
                everything[f"{pre}sent"]
    # Every series carries ztunnel's 27 labels and the workloads' Deployment names, never
    # a pod's name.
    for r in p.query("istio_tcp_connections_opened_total"):
        labels = r["metric"]
        assert len(labels) == 27 + 3, labels  # + __name__, job, instance
        assert labels["source_workload"] == "sleep" and labels["destination_workload"] == "echo"
        assert SLEEP_POD not in labels.values() and ECHO_POD not in labels.values()
        assert labels["request_protocol"] == "tcp"
        assert labels["connection_security_policy"] == "mutual_tls"
        assert (labels["source_app"], labels["source_version"]) == ("sleep", "v1")
        assert (labels["destination_app"], labels["destination_version"]) == ("echo", "v2")
        assert labels["destination_principal"] == ECHO_ID
        assert labels["source_principal"] == SLEEP_ID
        assert labels["source_cluster"] == labels["destination_cluster"] == "Kubernetes"


def test_node_and_control_plane_metrics_are_scraped(mesh: Mesh) -> None:
    p = mesh.prom
    assert {r["metric"]["instance"]: r["value"][1] for r in p.query("up")} == {
        f"{NODE1}:15020": "1", f"{NODE2}:15020": "1", f"{NODE1}:15022": "1",
        f"{NODE2}:15022": "1", "127.0.0.1:15014": "1"}
    assert p.value("sum(meshnode_agent_ready)") == 2
    assert p.value("sum(meshnode_agent_xds_connected)") == 2
    assert p.value('sum(meshnode_pods{state="enrolled"})') == 2
    assert p.value("sum(workload_manager_active_proxy_count)") == 2
    assert p.value("sum(meshnode_controlplane_ads_clients)") == 2
    assert {r["metric"]["node"] for r in p.query("meshnode_controlplane_ads_clients > 0")} == \
        {"node1", "node2"}
    left = {r["metric"]["identity"]: float(r["value"][1]) for r in p.query(
        "meshnode_proxy_certificate_expiry_timestamp_seconds - time()")}
    assert set(left) == {SLEEP_ID, ECHO_ID}
    assert all(23 * 3600 < s <= 24 * 3600 for s in left.values()), left


def test_every_dashboard_query_runs_and_the_main_panels_have_data(mesh: Mesh) -> None:
    p = mesh.prom
    empty = []
    for path in DASHBOARDS:
        for where, expr in dashboard_queries(path):
            for var in GRAFANA_VARS:
                expr = expr.replace(var, "5m" if var != "$__range" else "1h")
            expr = re.sub(r"\$\w+", ".*", expr)
            if not p.query(expr):
                empty.append(where)
    # Panels that must show this mesh (others may be empty: no drift, no denial, no DNS).
    must = {"meshnode-mesh.json: Connections opened", "meshnode-mesh.json: Bytes",
            "meshnode-mesh.json: mTLS share of bytes", "meshnode-mesh.json: Who talks to whom",
            "meshnode-mesh.json: Bytes by destination service",
            "meshnode-node.json: Pods by state", "meshnode-node.json: Agents ready",
            "meshnode-node.json: Shortest certificate lifetime left",
            "meshnode-node.json: Proxy and control-plane connections",
            "meshnode-node.json: variable node",
            "meshnode-controlplane.json: ADS clients", "meshnode-controlplane.json: Push latency",
            "meshnode-controlplane.json: Served resources",
            "meshnode-mesh.json: variable namespace", "meshnode-mesh.json: variable workload"}
    assert not must & set(empty), sorted(must & set(empty))
    assert p.value('sum(rate(istio_tcp_received_bytes_total{reporter="destination", '
                   'connection_security_policy="mutual_tls"}[10m])) / '
                   'sum(rate(istio_tcp_received_bytes_total{reporter="destination"}[10m]))') == 1


def alert_exprs() -> dict[str, str]:
    from tests.telemetry.test_dashboards import alerts
    return {r["alert"]: r["expr"] for r in alerts()}


def test_no_alert_fires_on_a_healthy_mesh(mesh: Mesh) -> None:
    firing = {name: mesh.prom.query(expr) for name, expr in alert_exprs().items()}
    assert not {k: v for k, v in firing.items() if v}


def test_a_denied_connection_is_counted_with_its_flags(mesh: Mesh) -> None:
    p = mesh.prom

    def closed(reporter: str) -> dict[str, float]:
        return {r["metric"]["response_flags"]: float(r["value"][1]) for r in p.query(
            f'sum by (response_flags) (istio_tcp_connections_closed_total'
            f'{{reporter="{reporter}"}})')}

    conns = totals(WARMUP, TEST)["conns"]
    assert closed("destination") == {"-": conns} and closed("source") == {"-": conns}
    deny = k8s.authorization_policy("deny-sleep", "DENY", [{"from": [{"source": {
        "principals": ["cluster.local/ns/default/sa/sleep"]}}]}], selector={"app": "echo"})
    mesh.cp.write_manifests("policies.yaml", deny)
    try:
        wait_for(lambda: outcome(mesh.t.a, VIP, 80, b"x")[0] == "reset", 5, "the DENY policy")
        wait_for(lambda: closed("destination").get("DENY", 0) >= 1, 20,
                 "the denial in Prometheus", step=0.2)
        denied = closed("destination")["DENY"]
        # The client's proxy saw its CONNECT refused: a connection that failed (CONNECT).
        wait_for(lambda: closed("source").get("CONNECT", 0) == denied, 20,
                 "the client side's failure in Prometheus", step=0.2)
        # Opened, then closed DENY: as ztunnel counts it (calls made before the policy
        # arrived were served: closed "-").
        wait_for(lambda: p.value('sum(istio_tcp_connections_opened_total{reporter='
                                 '"destination", response_flags="-"})') ==
                 sum(closed("destination").values()), 10, "opened == closed", step=0.2)
        assert p.value('sum(istio_tcp_connections_opened_total{response_flags="DENY"})') \
            is None
    finally:
        mesh.cp.remove_manifests("policies.yaml")
    wait_for(lambda: outcome(mesh.t.a, VIP, 80, b"x")[0] == "echo", 5, "access back")


def test_control_plane_outage_is_seen_by_the_agents_metric_and_alert(mesh: Mesh) -> None:
    """Last: the control plane goes away; the agents' xDS gauge drops to 0, which is what
    MeshnodeAgentControlPlaneDisconnected reads (its `for: 5m` aside)."""
    expr = alert_exprs()["MeshnodeAgentControlPlaneDisconnected"]
    assert mesh.prom.query(expr) == []
    mesh.cp.stop(signal.SIGKILL)
    try:
        wait_for(lambda: {r["metric"]["instance"] for r in mesh.prom.query(expr)} ==
                 {f"{NODE1}:15022", f"{NODE2}:15022"}, 30,
                 "both agents' meshnode_agent_xds_connected to drop", step=0.2)
        assert exchange(mesh.t.a, VIP, 80, b"during") == sha(REPLY)  # traffic unaffected
    finally:
        mesh.cp.start()
    wait_for(lambda: mesh.prom.query(expr) == [], 30, "the agents to reconnect", step=0.2)
