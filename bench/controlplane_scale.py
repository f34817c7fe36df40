"""Control-plane scale (issue 14): a big cluster in the API server, one ADS stream per node,
pod churn; how fast each change reaches every stream and what it costs the control plane.

Two processes share the machine:
- this one: the fake API server (testing/fakeapi.py) holding the cluster, the churn driver
  (pods added and deleted through it), and the node agents' side: one real Delta ADS stream
  per node (gRPC over its own TLS connection, the node's token, wildcard on Address and
  Authorization, every response ACKed as ztunnel does), all in one grpc.aio event loop;
- the real control plane (controlplane/server.py, `kubeconfig` source: it lists and watches
  the fake API server) in a child process (testing/controlplane_child.py), so its CPU time
  and RSS are its own. It logs at `info`, as `meshnode controlplane` does by default (to a
  file).

Set-up, not measured: one stream subscribes with nothing and receives the whole mesh; every
other stream starts as a reconnecting agent does, with `initial_resource_versions` (what that
first stream received), so the mesh is not sent a thousand times before the churn starts.

Each round: `churn` pod events per second for `seconds` (alternately a new pod added and the
oldest pod deleted, so the cluster keeps its size), then until every stream has received
every event. Event-to-push latency: from the fake API server's change (the moment the watch
event is queued) to a stream's receipt of the resource (or of its removal), per stream and
event; every stream is affected (wildcard). CPU per event: the control plane's user + system
time over the round / events. Bytes per event: the DeltaDiscoveryResponse payloads received
by all streams over the round (protobuf bytes, without gRPC/HTTP/2/TLS framing) / events.
Memory per workload: the control plane's RSS after a full GC, less its RSS before it read the
cluster, / pods. The whole run is repeated on a cluster 10x smaller (same streams, churn and
rounds) to check that a push costs the change, not the mesh.

Knobs (environment): MESHNODE_BENCH_CP_PODS (100000), _NAMESPACES (pods / 100), _STREAMS
(1000; also the number of nodes), _CHURN (events/s, 100), _SECONDS (per round, 10), _ROUNDS
(3), _SMALL_PODS (pods / 10), _CHANNELS (TLS connections the streams share; default one per
stream, as a thousand nodes would open); _PROFILE=FILE (a cProfile of the control plane during
the rounds) and _HEAP=1 (where the control plane's memory is, with each RSS: slow, and it
returns free heap to the system, so not for the memory figure) are read by the child
(testing/controlplane_child.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# gRPC's core logs every GOAWAY of a thousand connections at INFO otherwise (read when gRPC
# is first imported; the control plane child inherits it).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.stats import md_table, pct  # noqa: E402
from testing.controlplane_child import ControlPlaneChild, cpu, node_tokens  # noqa: E402

# The control plane trims its heap 1 s after the last big request (controlplane/heap.py's
# DELAY; bench reads the product only through its processes, as the layering rules want).
TRIM_SETTLE_SECONDS = 2.0

ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION = "type.googleapis.com/istio.security.Authorization"
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
SERVICES_PER_NS = 5     # each selects a fifth of its namespace's pods (label app=app-<i % 5>)
P99_TARGET_S = 1.0
MEMORY_TARGET = 2048    # bytes per workload
PROPORTION_TARGET = 1.2  # bytes per event, big cluster / small: "about equal"


def _env(name: str, default: int) -> int:
    return int(os.environ.get(f"MESHNODE_BENCH_CP_{name}", "") or default)


@dataclass
class Config:
    pods: int
    namespaces: int
    streams: int
    churn: int       # pod events per second
    seconds: float   # churn per round
    rounds: int
    small_pods: int  # the 10x smaller cluster of the proportionality check (0: skipped)
    channels: int    # TLS connections the streams share (0: one per stream, as nodes do)

    @classmethod
    def from_env(cls, **override: Any) -> Config:
        pods = override.pop("pods", None) or _env("PODS", 100_000)
        c = cls(pods=pods, namespaces=_env("NAMESPACES", max(1, pods // 100)),
                streams=_env("STREAMS", 1000), churn=_env("CHURN", 100),
                seconds=float(_env("SECONDS", 10)), rounds=_env("ROUNDS", 3),
                small_pods=_env("SMALL_PODS", max(1, pods // 10)), channels=_env("CHANNELS", 0))
        for k, v in override.items():
            setattr(c, k, v)
        return c


# ---- the cluster -------------------------------------------------------------------------------

def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


class Cluster:
    """Namespaces (ambient), nodes (one per stream), 5 Services and one AuthorizationPolicy
    per namespace, pods spread over all of them; then the churn's pods."""

    def __init__(self, pods: int, namespaces: int, nodes: int) -> None:
        self.namespaces, self.nodes = namespaces, nodes
        self.next = pods
        self.live: collections.deque[tuple[str, str]] = collections.deque()  # (uid, name)

    def fill(self, api: Any) -> None:
        for n in range(self.namespaces):
            ns = f"ns-{n}"
            api.put("namespaces", {"metadata": {"name": ns, "uid": f"ns-{n}", "labels": {
                "istio.io/dataplane-mode": "ambient"}}}, notify=False)
            for s in range(SERVICES_PER_NS):
                k = n * SERVICES_PER_NS + s
                api.put("services", {
                    "metadata": {"name": f"svc-{s}", "namespace": ns, "uid": f"svc-{k}"},
                    "spec": {"clusterIP": f"172.{16 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}",
                             "selector": {"app": f"app-{s}"},
                             "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
                    notify=False)
            api.put("authorizationpolicies", {
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "allow-sa-1", "namespace": ns, "uid": f"ap-{n}"},
                "spec": {"selector": {"matchLabels": {"app": "app-0"}}, "action": "ALLOW",
                         "rules": [{"from": [{"source": {"principals": [
                             f"cluster.local/ns/{ns}/sa/sa-1"]}}]}]}}, notify=False)
        for j in range(self.nodes):
            api.put("nodes", {"metadata": {"name": f"node-{j}", "uid": f"node-{j}", "labels": {
                "topology.kubernetes.io/region": "r1",
                "topology.kubernetes.io/zone": f"z{j % 3}"}}}, notify=False)
        for i in range(self.next):
            self._add(api, i, notify=False)
        api.compact()  # the control plane lists; nobody watches from before

    def _add(self, api: Any, i: int, notify: bool = True) -> str:
        ns, name, uid = f"ns-{i % self.namespaces}", f"pod-{i}", f"pod-{i}"
        api.put("pods", {
            "metadata": {"name": name, "namespace": ns, "uid": uid,
                         "labels": {"app": f"app-{i % SERVICES_PER_NS}"}},
            "spec": {"nodeName": f"node-{i % self.nodes}",
                     "serviceAccountName": f"sa-{i % SERVICES_PER_NS}",
                     "containers": [{"name": "app", "image": "app:1", "ports": [
                         {"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": _ip(i), "podIPs": [{"ip": _ip(i)}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}, notify=notify)
        self.live.append((uid, name))
        return f"Kubernetes//Pod/{ns}/{name}"

    def add(self, api: Any) -> str:
        """A new pod; the resource name its workload is served as."""
        self.next += 1
        return self._add(api, self.next)

    def delete(self, api: Any) -> str:
        """Delete the oldest pod; the resource name that goes away."""
        uid, name = self.live.popleft()
        ns = api.get("pods", uid)["metadata"]["namespace"]
        api.delete("pods", uid)
        return f"Kubernetes//Pod/{ns}/{name}"


# ---- the node agents' side --------------------------------------------------------------------

class Streams:
    """One wildcard Delta ADS stream per node, over `channels` TLS connections. Keeps, while
    `recording`, the latency of every (stream, event) it receives and the bytes pushed."""

    def __init__(self, port: int, root_pem: bytes, channels: int) -> None:
        import grpc

        creds = grpc.ssl_channel_credentials(root_certificates=root_pem)
        opts = [("grpc.use_local_subchannel_pool", 1),  # a connection per channel
                ("grpc.max_receive_message_length", 1 << 30),
                ("grpc.max_send_message_length", 1 << 30)]
        self.channels = [grpc.aio.secure_channel(f"localhost:{port}", creds, options=opts)
                         for _ in range(channels)]
        self.changed_at: dict[str, float] = {}  # resource name -> when its event happened
        self.samples = array("d")
        self.bytes = self.pushes = 0
        self.recording = False
        self.versions: dict[str, dict[str, str]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []

    async def open(self, tokens: Sequence[str], concurrency: int = 8) -> None:
        """The first stream learns the mesh; the others start from it, `concurrency` at
        a time (each waits for its two first responses)."""
        from envoy.service.discovery.v3 import discovery_pb2 as d

        await self._open(0, tokens[0], [d.DeltaDiscoveryRequest(type_url=t).SerializeToString()
                                        for t in (ADDRESS, AUTHORIZATION)], learn=True)
        first = [d.DeltaDiscoveryRequest(type_url=t, initial_resource_versions=self.versions[t])
                 .SerializeToString() for t in (ADDRESS, AUTHORIZATION)]
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                await self._open(i, tokens[i], first)
        await asyncio.gather(*(one(i) for i in range(1, len(tokens))))
        self.versions.clear()

    async def _open(self, i: int, token: str, first: list[bytes], learn: bool = False) -> None:
        ch = self.channels[i % len(self.channels)]
        call: Any = ch.stream_stream(METHOD)(metadata=[("authorization", f"Bearer {token}")])
        ready = asyncio.get_running_loop().create_future()
        self.tasks.append(asyncio.create_task(self._run(call, ready, learn)))
        for req in first:
            await call.write(req)
        await asyncio.wait_for(ready, 300)

    async def _run(self, call: Any, ready: asyncio.Future[None], learn: bool) -> None:
        import grpc
        from envoy.service.discovery.v3 import discovery_pb2 as d

        initial = 0
        try:
            while (raw := await call.read()) is not grpc.aio.EOF:
                now = time.monotonic()
                resp = d.DeltaDiscoveryResponse.FromString(raw)
                if learn and initial < 2:
                    self.versions[resp.type_url] = {r.name: r.version for r in resp.resources}
                if self.recording:
                    self.bytes += len(raw)
                    self.pushes += 1
                    for r in resp.resources:
                        if (t := self.changed_at.get(r.name)) is not None:
                            self.samples.append(now - t)
                    for n in resp.removed_resources:
                        if (t := self.changed_at.get(n)) is not None:
                            self.samples.append(now - t)
                await call.write(d.DeltaDiscoveryRequest(
                    type_url=resp.type_url, response_nonce=resp.nonce).SerializeToString())
                initial += 1
                if initial == 2 and not ready.done():
                    ready.set_result(None)
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.errors.append(str(exc.code()))
            if not ready.done():
                ready.set_exception(RuntimeError(f"stream ended before its first responses: "
                                                 f"{exc!r}"))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for ch in self.channels:
            await ch.close()


# ---- one cluster size --------------------------------------------------------------------------

async def _round(api: Any, cluster: Cluster, streams: Streams, cp: ControlPlaneChild,
                 churn: int, seconds: float, n_streams: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    streams.samples = array("d")
    streams.bytes = streams.pushes = 0
    streams.changed_at.clear()
    events = max(2, round(churn * seconds))
    cp.send("round")
    cpu0, mine0, t0 = cp.cpu(), cpu(), time.monotonic()
    streams.recording = True
    start = loop.time()
    for k in range(events):
        delay = start + k / churn - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # The time is taken just before the change: the API server queues the watch event
        # in the call, and nothing else runs until this task awaits.
        now = time.monotonic()
        streams.changed_at[cluster.add(api) if k % 2 == 0 else cluster.delete(api)] = now
    churned = time.monotonic() - t0
    expected = events * n_streams
    deadline = time.monotonic() + max(30.0, 3 * seconds)
    while len(streams.samples) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    delivered_at = time.monotonic()
    await asyncio.sleep(0.2)  # the last ACKs
    streams.recording = False
    used, mine, wall = cp.cpu() - cpu0, cpu() - mine0, time.monotonic() - t0
    mem = await cp.gc()
    s = streams.samples
    return {"events": events, "churn_s": churned, "drain_s": delivered_at - t0 - churned,
            "expected": expected, "delivered": len(s),
            "p50_s": pct(s, 50), "p99_s": pct(s, 99), "max_s": max(s, default=float("nan")),
            "cp_cpu_s": used, "cpu_per_event_ms": used / events * 1e3,
            "cp_cpu_share": used / wall, "load_cpu_share": mine / wall,
            "bytes": streams.bytes, "pushes": streams.pushes,
            "bytes_per_event": streams.bytes / events,
            "bytes_per_event_stream": streams.bytes / events / n_streams,
            "rss": mem["rss"], "sessions": mem["streams"], "counts": mem["counts"],
            "heap": mem.get("heap")}


async def _cluster(pods: int, cfg: Config, tmp: Path) -> dict[str, Any]:
    from testing.fakeapi import CONTROLPLANE_RESOURCES, FakeApi

    out: dict[str, Any] = {"pods": pods, "namespaces": max(1, min(cfg.namespaces, pods)),
                           "streams": cfg.streams}
    api = FakeApi(CONTROLPLANE_RESOURCES)
    cluster = Cluster(pods, out["namespaces"], cfg.streams)
    t = time.monotonic()
    cluster.fill(api)
    out["fill_s"] = time.monotonic() - t
    await api.start()
    state = tmp / f"cp-{pods}"
    state.mkdir()
    tokens = node_tokens(state, [f"node-{j}" for j in range(cfg.streams)])
    cp = streams = None
    try:
        t = time.monotonic()
        cp = await ControlPlaneChild.start(api.kubeconfig(tmp / f"kc-{pods}"), state,
                                           tmp / f"cp-{pods}.log")
        baseline = await cp.said(120)
        out["baseline_rss"], out["baseline_heap"] = baseline["rss"], baseline.get("heap")
        ready = await cp.said(900)
        out["sync_s"] = time.monotonic() - t
        out["synced_rss"] = ready["rss"]
        out["counts"] = ready["counts"]  # workloads, services, policies
        out["synced_heap"] = ready.get("heap")  # with MESHNODE_BENCH_CP_HEAP=1
        t, cpu0 = time.monotonic(), cp.cpu()
        streams = Streams(ready["port"], (state / "root-cert.pem").read_bytes(),
                          cfg.channels or cfg.streams)
        await streams.open(tokens)
        out["connect_s"] = time.monotonic() - t
        out["connect_cpu_s"] = cp.cpu() - cpu0
        # The control plane returns the reconnects' freed heap to the system a second after
        # the last big request (controlplane/heap.py): read its RSS as it settles, not mid-way.
        await asyncio.sleep(TRIM_SETTLE_SECONDS)
        connected = await cp.gc()
        out["connected_rss"], out["connected_heap"] = connected["rss"], connected.get("heap")
        out["rounds"] = [await _round(api, cluster, streams, cp, cfg.churn, cfg.seconds,
                                      cfg.streams) for _ in range(cfg.rounds)]
        out["stream_errors"] = streams.errors[:5]
    finally:
        if streams is not None:
            await streams.close()
        if cp is not None:
            await cp.stop()
        await api.stop()
    return out


async def _measure(cfg: Config) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mncpscale-") as tmp:
        out: dict[str, Any] = {"config": cfg.__dict__.copy(), "clusters": {}}
        t = time.monotonic()
        if cfg.small_pods:
            out["clusters"]["small"] = await _cluster(cfg.small_pods, cfg, Path(tmp))
            gc.collect()
        out["clusters"]["big"] = await _cluster(cfg.pods, cfg, Path(tmp))
        out["total_s"] = time.monotonic() - t
        return out


def measure(**override: Any) -> dict[str, Any]:
    """Keyword arguments override Config.from_env (the smoke test's tiny scale)."""
    return asyncio.run(_measure(Config.from_env(**override)))


# ---- the report --------------------------------------------------------------------------------

def _med(rounds: list[dict[str, Any]], key: str) -> tuple[float, float, float]:
    xs = [r[key] for r in rounds]
    return statistics.median(xs), min(xs), max(xs)


def _memory(c: dict[str, Any]) -> list[float]:
    return [(r["rss"] - c["baseline_rss"]) / c["pods"] for r in c["rounds"]]


def report(r: dict[str, Any]) -> str:
    cfg = r["config"]
    big, small = r["clusters"]["big"], r["clusters"].get("small")
    rounds = big["rounds"]
    verdict = {True: "met", False: "NOT met"}

    def ms(x: float) -> str:
        return f"{x * 1e3:.0f}"

    p50, p50lo, p50hi = _med(rounds, "p50_s")
    p99, p99lo, p99hi = _med(rounds, "p99_s")
    cpu, cpulo, cpuhi = _med(rounds, "cpu_per_event_ms")
    mem = _memory(big)
    memm = statistics.median(mem)
    bpe, bpelo, bpehi = _med(rounds, "bytes_per_event")
    rows = [
        ["event-to-push latency p50, every stream", "-", f"{ms(p50)} ms",
         f"{ms(p50lo)}-{ms(p50hi)}", "-", ""],
        ["event-to-push latency p99, every stream", f"≤ {P99_TARGET_S:.0f} s", f"{ms(p99)} ms",
         f"{ms(p99lo)}-{ms(p99hi)}", f"{p99 / P99_TARGET_S:.2f}", verdict[p99 <= P99_TARGET_S]],
        ["control-plane CPU per event", "-", f"{cpu:.1f} ms", f"{cpulo:.1f}-{cpuhi:.1f}", "-", ""],
        ["control-plane memory per workload", f"≤ {MEMORY_TARGET // 1024} KiB",
         f"{memm / 1024:.1f} KiB", f"{min(mem) / 1024:.1f}-{max(mem) / 1024:.1f}",
         f"{memm / MEMORY_TARGET:.2f}", verdict[memm <= MEMORY_TARGET]],
        ["bytes pushed per event, all streams", "-", f"{bpe / 1024:.0f} KiB",
         f"{bpelo / 1024:.0f}-{bpehi / 1024:.0f}", "-", ""],
    ]
    if small is not None:
        ratios = [b["bytes_per_event"] / s["bytes_per_event"]
                  for b, s in zip(rounds, small["rounds"], strict=False)]
        prop = statistics.median(ratios)
        rows.append([f"bytes per event, {big['pods']:,} ÷ {small['pods']:,} pods",
                     f"≈ 1 (≤ {PROPORTION_TARGET})", f"{prop:.2f}",
                     f"{min(ratios):.2f}-{max(ratios):.2f}", f"{prop / PROPORTION_TARGET:.2f}",
                     verdict[prop <= PROPORTION_TARGET]])
    workloads, services, policies = big["counts"]
    connections = (f"{cfg['channels']} TLS connections" if cfg["channels"]
                   else "one TLS connection each")
    scaled = "" if big["pods"] >= 100_000 and big["streams"] >= 1000 else (
        " Scaled down (MESHNODE_BENCH_CP_*) from the issue's 100,000 pods and 1,000 streams.")
    text = (f"### Control-plane scale ({big['pods']:,} pods, {big['streams']:,} ADS streams)\n\n"
            f"{big['pods']:,} pods in {big['namespaces']:,} namespaces on {big['streams']:,} "
            f"nodes in the fake API server ({workloads:,} workloads, {services:,} services, "
            f"{policies:,} policies served); the control plane in its own process, reading it "
            f"as it reads an API server; {big['streams']:,} Delta ADS streams (one per node: "
            f"its token, wildcard on Address and Authorization, every push ACKed) over "
            f"{connections}; churn: {cfg['churn']} pod events/s (half new "
            f"pods, half deletions of the oldest) for {cfg['seconds']:.0f} s per round, then "
            f"until every stream has every event. Latency: from the API server's change to a "
            f"stream's receipt, for every (stream, event). Medians of {len(rounds)} rounds; "
            f"spread: min-max of the rounds; ratio: measured / target.{scaled}\n\n")
    text += md_table(["metric", "target", "median", "spread", "ratio", ""], rows)
    delivered = sum(x["delivered"] for x in rounds)
    expected = sum(x["expected"] for x in rounds)
    pushes = statistics.median(x["pushes"] for x in rounds) / big["streams"]
    events = statistics.median(x["events"] for x in rounds)
    share = statistics.median(x["cp_cpu_share"] for x in rounds)
    load = statistics.median(x["load_cpu_share"] for x in rounds)
    bps = statistics.median(x["bytes_per_event_stream"] for x in rounds)
    per_wl = (big["synced_rss"] - big["baseline_rss"]) / big["pods"] / 1024
    per_stream = (big["connected_rss"] - big["synced_rss"]) / big["streams"] / 2**20
    text += (f"\nThe streams received {delivered:,} of {expected:,} (stream, event) pairs; "
             f"{bps:.0f} B per event per stream, in {pushes:.0f} pushes per stream for "
             f"{events:.0f} events a round (changes that land while a stream is busy go out "
             f"together). The control plane used {share:.0%} of a core during the rounds; the "
             f"load generator (API server, churn, the streams' clients) {load:.0%}, and its "
             f"receipt time is in the latency. Control-plane RSS: "
             f"{big['baseline_rss'] / 2**20:.0f} MiB before reading the cluster, "
             f"{big['synced_rss'] / 2**20:.0f} MiB with it ({per_wl:.1f} KiB per workload "
             f"before any stream), {big['connected_rss'] / 2**20:.0f} MiB with the streams "
             f"open ({per_stream:.2f} MiB per stream). Set-up (not measured above): the "
             f"cluster listed and converted in "
             f"{big['sync_s']:.0f} s; the streams opened in {big['connect_s']:.0f} s "
             f"({big['connect_cpu_s']:.0f} s of control-plane CPU: all but the first start "
             f"as reconnecting agents, with the versions they hold).")
    if small is not None:
        sp99 = statistics.median(x["p99_s"] for x in small["rounds"])
        scpu = statistics.median(x["cpu_per_event_ms"] for x in small["rounds"])
        sbps = statistics.median(x["bytes_per_event_stream"] for x in small["rounds"])
        text += (f" The {small['pods']:,}-pod cluster, same streams and churn: p99 {ms(sp99)} "
                 f"ms, {scpu:.1f} ms of CPU and {sbps:.0f} B per stream per event.")
    return text + "\n"


if __name__ == "__main__":
    res = measure()
    print(json.dumps(res, indent=2))
    print(report(res))
