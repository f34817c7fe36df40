"""Test doubles for proxy/traffic: a clock the test moves, a mesh view from plain records,
and builders for workloads and services."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from core.mesh.model import NO_LOCALITY, Port, Service, Vip, Workload, WorkloadStatus
from core.mesh.traffic import ServiceTraffic


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def service(name: str, vip: str, ports: Sequence[tuple[int, int]] = ((80, 8080),),
            ns: str = "default", **kw: object) -> Service:
    return Service(name=name, namespace=ns, hostname=f"{name}.{ns}.svc.cluster.local",
                   vips=(Vip("", vip),) if vip else (),
                   ports=tuple(Port(p, t) for p, t in ports), **kw)  # type: ignore[arg-type]


def workload(name: str, ip: str, backs: Iterable[Service] = (), *, ns: str = "default",
             node: str = "n1", loc: tuple[str, str, str] = NO_LOCALITY,
             healthy: bool = True) -> Workload:
    return Workload(uid=f"uid-{name}", name=name, namespace=ns, addresses=(ip,), node=node,
                    locality=loc, tunnel_protocol=1,
                    services=tuple((s.key, s.ports) for s in backs),
                    status=WorkloadStatus.HEALTHY if healthy else WorkloadStatus.UNHEALTHY)


class FakeMesh:
    """MeshView over fixed records; `endpoints` returns the same tuple until `set_*`."""

    def __init__(self, services: Iterable[Service], workloads: Iterable[Workload],
                 traffic: Iterable[ServiceTraffic] = (),
                 labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.services = {s.key: s for s in services}
        self.workloads = list(workloads)
        self.rules = {t.service: t for t in traffic}
        self.label_map = dict(labels or {})
        self._cache: dict[str, tuple[Workload, ...]] = {}

    def set_traffic(self, t: ServiceTraffic) -> None:
        self.rules[t.service] = t

    def set_workloads(self, workloads: Iterable[Workload]) -> None:
        self.workloads = list(workloads)
        self._cache.clear()

    def service(self, key: str) -> Service | None:
        return self.services.get(key)

    def endpoints(self, service: Service) -> Sequence[Workload]:
        got = self._cache.get(service.key)
        if got is None:
            got = self._cache[service.key] = tuple(
                w for w in self.workloads
                if w.healthy and any(k == service.key for k, _ in w.services))
        return got

    def traffic(self, key: str) -> ServiceTraffic | None:
        return self.rules.get(key)

    def labels(self, uid: str) -> Mapping[str, str]:
        return self.label_map.get(uid, {})
