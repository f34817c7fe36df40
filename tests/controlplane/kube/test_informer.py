"""The control plane's API-server source (controlplane/kube/informer.py) against the fake API
server (testing/fakeapi.py) on localhost: the initial list of every kind (Istio's CRDs too),
watch events, bookmarks, 410 Gone and the relist diff, outages, malformed objects, missing
CRDs, paging, and the kubeconfig it connects with."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.config import ConfigException
from prometheus_client import REGISTRY

from controlplane.kube.informer import CALLS, KubeInformers, resource_name
from controlplane.kube.objects import (
    AUTHORIZATION_POLICY,
    KINDS,
    NAMESPACE,
    POD,
    SERVICE,
    SERVICE_ENTRY,
    Kind,
    Obj,
    ObjectStore,
)
from testing import fakeapi
from testing.fakeapi import CONTROLPLANE_RESOURCES, FakeApi, obj

# One object of every kind the control plane reads: (fake API resource, object).
WORLD: list[tuple[fakeapi.Resource, Obj]] = [
    (fakeapi.NAMESPACES, obj(fakeapi.NAMESPACES, "shop",
                             metadata={"name": "shop",
                                       "labels": {"istio.io/dataplane-mode": "ambient"}})),
    (fakeapi.NODES, obj(fakeapi.NODES, "n1", metadata={"name": "n1", "labels": {
        "topology.kubernetes.io/zone": "z1"}})),
    (fakeapi.PODS, obj(fakeapi.PODS, "web-1", "shop",
                       spec={"nodeName": "n1", "serviceAccountName": "web"},
                       status={"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}]})),
    (fakeapi.SERVICES, obj(fakeapi.SERVICES, "web", "shop",
                           spec={"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                                 "ports": [{"port": 80, "protocol": "TCP"}]})),
    (fakeapi.ENDPOINT_SLICES, obj(fakeapi.ENDPOINT_SLICES, "web-abc", "shop",
                                  addressType="IPv4",
                                  endpoints=[{"addresses": ["10.0.0.5"]}])),
    (fakeapi.SERVICE_ENTRIES, obj(fakeapi.SERVICE_ENTRIES, "ext", "shop",
                                  spec={"hosts": ["api.example.com"],
                                        "ports": [{"number": 443, "name": "tls",
                                                   "protocol": "TLS"}],
                                        "resolution": "DNS"})),
    (fakeapi.WORKLOAD_ENTRIES, obj(fakeapi.WORKLOAD_ENTRIES, "vm", "shop",
                                   spec={"address": "192.168.1.10"})),
    (fakeapi.AUTHORIZATION_POLICIES, obj(fakeapi.AUTHORIZATION_POLICIES, "deny", "shop",
                                         spec={"action": "DENY", "rules": [{}]})),
    (fakeapi.PEER_AUTHENTICATIONS, obj(fakeapi.PEER_AUTHENTICATIONS, "strict",
                                       "istio-system", spec={"mtls": {"mode": "STRICT"}})),
    (fakeapi.VIRTUAL_SERVICES, obj(fakeapi.VIRTUAL_SERVICES, "web", "shop", spec={
        "hosts": ["web"], "tcp": [{"route": [{"destination": {"host": "web"}}]}]})),
    (fakeapi.DESTINATION_RULES, obj(fakeapi.DESTINATION_RULES, "web", "shop", spec={
        "host": "web", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}})),
    (fakeapi.SIDECARS, obj(fakeapi.SIDECARS, "default", "shop", spec={
        "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})),
]
NAMES = {r.kind: (o["metadata"].get("namespace", ""), o["metadata"]["name"]) for r, o in WORLD}

Event = tuple[str, str, str, bool]  # (kind, namespace, name, present)


def run(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    async def capped() -> None:
        await asyncio.wait_for(coro, timeout)
    asyncio.run(capped())


async def eventually(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.02)


async def world(**kw: Any) -> FakeApi:
    api = FakeApi(kw.pop("resources", CONTROLPLANE_RESOURCES))
    for resource, o in WORLD:
        if resource.plural in api.resources:
            api.put(resource.plural, o)
    return await api.start()


def recorder(store: ObjectStore) -> list[Event]:
    events: list[Event] = []
    store.subscribe(lambda k, ns, name, o: events.append((k.kind, ns, name, o is not None)))
    return events


def contents(store: ObjectStore) -> dict[tuple[str, str, str], Obj]:
    return {(k.kind, *NAMES_OF(o)): copy.deepcopy(o) for k in KINDS for o in store.list(k)}


def NAMES_OF(o: Obj) -> tuple[str, str]:
    return o["metadata"].get("namespace", ""), o["metadata"]["name"]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def lists(api: FakeApi, kind: Kind) -> list[dict[str, str]]:
    return [q for m, p, q in api.requests if p == kind.path and "watch" not in q]


@asynccontextmanager
async def informers_for(api: FakeApi, tmp: Path, store: ObjectStore | None = None,
                        kubeconfig: str = "") -> AsyncIterator[KubeInformers]:
    inf = await KubeInformers.connect(kubeconfig or api.kubeconfig(tmp / "kubeconfig"),
                                      store or ObjectStore(), watch_timeout_seconds=30,
                                      absent_recheck=0.2)
    # Fast reconnects: the tests exercise backoff, not its real pace.
    for r in inf.reflectors.values():
        r.backoff.initial = 0.02
        r.backoff.cap = 0.2
    await inf.start()
    try:
        yield inf
    finally:
        await inf.stop()


def test_initial_list_fills_the_store_with_every_kind(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        # managedFields are large and read by nobody: not stored.
        web = api.find("pods", "web-1", "shop")
        assert web is not None
        web["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {}}]
        store = ObjectStore()
        events = recorder(store)
        async with informers_for(api, tmp_path, store) as inf:
            assert not inf.synced()
            await asyncio.wait_for(inf.wait_synced(), 20)
            assert inf.synced()
            for kind in KINDS:
                [got] = list(store.list(kind))
                assert NAMES_OF(got) == NAMES[kind.kind], kind.kind
                # List items of built-in kinds come without apiVersion/kind: set, as the
                # manifests source has them.
                assert (got["apiVersion"], got["kind"]) == (kind.api_version, kind.kind)
                [(_, want)] = [(r, o) for r, o in WORLD if r.kind == kind.kind]
                for field in set(want) - {"metadata", "apiVersion", "kind"}:
                    assert got[field] == want[field], (kind.kind, field)
            pod = store.get(POD, "shop", "web-1")
            assert pod is not None and "managedFields" not in pod["metadata"]
            assert sorted(events) == sorted((k.kind, *NAMES[k.kind], True) for k in KINDS)
            # Each kind listed once at its collection path for all namespaces, paged.
            for kind in KINDS:
                assert [q.get("limit") for q in lists(api, kind)] == ["500"], kind.kind
            await eventually(lambda: all(api.live_watches(k.plural) == 1 for k in KINDS),
                             what="one watch per kind")
        await api.stop()
    run(body())


def test_every_request_is_a_declared_call(tmp_path: Path) -> None:
    """What deploy/controlplane-rbac.yaml must grant is what the informer really asks."""
    async def body() -> None:
        api = await world()
        async with informers_for(api, tmp_path) as inf:
            await asyncio.wait_for(inf.wait_synced(), 20)
            await eventually(lambda: all(api.live_watches(k.plural) == 1 for k in KINDS))
        by_path = {k.path: k for k in KINDS}
        made = set()
        for method, path, query in api.requests:
            assert method == "GET" and path in by_path, (method, path)
            k = by_path[path]
            made.add(("watch" if query.get("watch") == "true" else "list", k.group, k.plural))
        # (CALLS["TokenReview"] are the CA's: tests/controlplane/kube/test_tokenreview.py)
        declared = {(c.verb, c.group, c.resource) for kind, calls in CALLS.items()
                    if kind != "TokenReview" for c in calls}
        assert made == declared
        await api.stop()
    run(body())


def test_watch_events_update_the_store(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        store = ObjectStore()
        async with informers_for(api, tmp_path, store) as inf:
            await asyncio.wait_for(inf.wait_synced(), 20)
            await eventually(lambda: all(api.live_watches(k.plural) == 1 for k in KINDS))
            events = recorder(store)
            api.put("serviceentries", obj(fakeapi.SERVICE_ENTRIES, "ext2", "shop",
                                          spec={"hosts": ["b.example.com"]}))
            svc = copy.deepcopy(api.find("services", "web", "shop"))
            assert svc is not None
            svc["spec"]["ports"].append({"port": 8080, "protocol": "TCP"})
            api.put("services", svc)
            api.remove("pods", "web-1", "shop")
            api.remove("namespaces", "shop")
            await eventually(lambda: len(events) == 4, what="four changes")
            # (one watch per kind: their order between kinds is not defined)
            assert sorted(events) == [("Namespace", "", "shop", False),
                                      ("Pod", "shop", "web-1", False),
                                      ("Service", "shop", "web", True),
                                      ("ServiceEntry", "shop", "ext2", True)]
            se = store.get(SERVICE_ENTRY, "shop", "ext2")
            assert se is not None and se["spec"] == {"hosts": ["b.example.com"]}
            assert se["apiVersion"] == "networking.istio.io/v1"
            got = store.get(SERVICE, "shop", "web")
            assert got is not None and len(got["spec"]["ports"]) == 2
            assert store.get(POD, "shop", "web-1") is None
            assert store.count(NAMESPACE) == 0
            assert all(len(lists(api, k)) == 1 for k in KINDS), "no relist needed"
        await api.stop()
    run(body())


def test_bookmark_then_410_relists_and_applies_only_the_difference(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.put("serviceentries", obj(fakeapi.SERVICE_ENTRIES, "stays", "shop",
                                      spec={"hosts": ["s.example.com"]}))
        store = ObjectStore()
        async with informers_for(api, tmp_path, store) as inf:
            await asyncio.wait_for(inf.wait_synced(), 20)
            await eventually(lambda: all(api.live_watches(k.plural) == 1 for k in KINDS))
            se = inf.reflectors["ServiceEntry"]
            # A quiet watch: the bookmark moves the version we resume from.
            api.bump(50)
            api.bookmark("serviceentries")
            target = str(api.rv)
            await eventually(lambda: se.resource_version == target, what="bookmark")
            api.close_watches("serviceentries")  # the server ends the watch: no relist
            await eventually(lambda: api.watch_count("serviceentries") == 2)
            last = [q for _, p, q in api.requests
                    if p == SERVICE_ENTRY.path and "watch" in q][-1]
            assert last["resourceVersion"] == target
            assert len(lists(api, SERVICE_ENTRY)) == 1
            await eventually(lambda: api.live_watches("serviceentries") == 1)

            events = recorder(store)
            # While the watch cache is behind, unseen: a pod deleted, a ServiceEntry added, an
            # AuthorizationPolicy changed; then history is compacted and the watches get 410.
            api.remove("pods", "web-1", "shop", notify=False)
            api.put("serviceentries", obj(fakeapi.SERVICE_ENTRIES, "new", "shop",
                                          spec={"hosts": ["n.example.com"]}), notify=False)
            ap = copy.deepcopy(api.find("authorizationpolicies", "deny", "shop"))
            assert ap is not None
            ap["spec"]["action"] = "ALLOW"
            api.put("authorizationpolicies", ap, notify=False)
            api.compact()
            for k in KINDS:
                api.expire(k.plural)
            await eventually(lambda: all(len(lists(api, k)) == 2 for k in KINDS),
                             what="a relist of every kind")
            await eventually(lambda: len(events) >= 3, what="the difference")
            await asyncio.sleep(0.2)  # nothing else may follow
            assert sorted(events) == [("AuthorizationPolicy", "shop", "deny", True),
                                      ("Pod", "shop", "web-1", False),
                                      ("ServiceEntry", "shop", "new", True)]
            assert store.get(SERVICE_ENTRY, "shop", "stays") is not None
            policy = store.get(AUTHORIZATION_POLICY, "shop", "deny")
            assert policy is not None and policy["spec"]["action"] == "ALLOW"
            assert se.resource_version == str(api.rv)
            reason = {"resource": resource_name(SERVICE_ENTRY), "reason": "expired"}
            assert counter("meshnode_k8s_relists_total", **reason) >= 1
        await api.stop()
    run(body())


def test_an_api_outage_keeps_the_state_and_recovers(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        # The Service lists fail: retried, and not ready meanwhile.
        api.fail_next(f"GET {SERVICE.path}", 500, times=1000)
        store = ObjectStore()
        async with informers_for(api, tmp_path, store) as inf:
            await eventually(lambda: store.count(POD) == 1 and len(lists(api, SERVICE)) >= 3,
                             what="retried Service lists")
            assert not inf.synced() and store.count(SERVICE) == 0
            api.failures.clear()
            await asyncio.wait_for(inf.wait_synced(), 20)
            assert store.count(SERVICE) == 1
            await eventually(lambda: all(api.live_watches(k.plural) == 1 for k in KINDS))
            before = contents(store)
            events = recorder(store)

            # Watches refused (503) for a while: nothing changes, they are retried.
            api.fail_next(f"GET {POD.path}?watch", 503, times=3)
            api.close_watches("pods")
            await eventually(lambda: api.watch_count("pods") >= 5, what="watch retries")
            assert contents(store) == before and events == []

            # The API server goes away entirely.
            errors = counter("meshnode_k8s_watch_errors_total", resource="pods")
            port = api.port
            await api.stop()
            await eventually(lambda: counter("meshnode_k8s_watch_errors_total",
                                             resource="pods") >= errors + 2,
                             what="failed reconnects")
            assert contents(store) == before and events == [], "an outage deleted state"
            assert inf.synced()
            # Meanwhile the cluster changed, and history was compacted (a long outage).
            api.remove("services", "web", "shop")
            api.put("pods", obj(fakeapi.PODS, "web-2", "shop", spec={"nodeName": "n1"}))
            api.compact()
            await api.start(port=port)
            await eventually(lambda: store.get(POD, "shop", "web-2") is not None and
                             store.count(SERVICE) == 0, timeout=8, what="recovery")
            await asyncio.sleep(0.2)
            assert sorted(events) == [("Pod", "shop", "web-2", True),
                                      ("Service", "shop", "web", False)]
        await api.stop()
    run(body())


def test_malformed_objects_and_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        # Bad list items: no name; a namespaced object without its namespace.
        api.objects["services"]["bad1"] = {"metadata": {"namespace": "shop", "uid": "bad1"}}
        api.objects["services"]["bad2"] = {"metadata": {"name": "nons", "uid": "bad2"}}
        res = resource_name(SERVICE)
        bad = counter("meshnode_k8s_watch_events_total", resource=res, type="MALFORMED")
        store = ObjectStore()
        async with informers_for(api, tmp_path, store) as inf:
            await asyncio.wait_for(inf.wait_synced(), 20)
            assert [NAMES_OF(o) for o in store.list(SERVICE)] == [("shop", "web")]
            assert counter("meshnode_k8s_watch_events_total", resource=res,
                           type="MALFORMED") == bad + 2
            await eventually(lambda: api.live_watches("services") == 1)
            for line in (b"not json at all\n", b'{"type": "ADDED"}\n', b"[1, 2]\n",
                         b'{"type": "ADDED", "object": "string"}\n',
                         b'{"type": "ADDED", "object": {"metadata": {"namespace": "x"}}}\n',
                         b'{"type": "ADDED", "object": {"metadata": {"name": "nons"}}}\n',
                         b'{"type": "WHATEVER", "object": {"metadata": '
                         b'{"name": "x", "namespace": "shop"}}}\n',
                         b'{"type": "BOOKMARK", "object": {}}\n'):
                api.inject("services", line)
            api.put("services", obj(fakeapi.SERVICES, "ok", "shop", spec={}))
            await eventually(lambda: store.get(SERVICE, "shop", "ok") is not None,
                             what="a valid event after junk")
            assert sorted(NAMES_OF(o) for o in store.list(SERVICE)) == [
                ("shop", "ok"), ("shop", "web")]
            assert counter("meshnode_k8s_watch_events_total", resource=res,
                           type="MALFORMED") == bad + 2 + 7
            assert api.watch_count("services") == 1, "the watch should have survived"
        await api.stop()
    run(body())


def test_a_missing_istio_crd_is_empty_and_picked_up_once_installed(tmp_path: Path) -> None:
    async def body() -> None:
        resources = [r for r in CONTROLPLANE_RESOURCES if r.group != "security.istio.io"]
        api = await world(resources=resources)
        store = ObjectStore()
        async with informers_for(api, tmp_path, store) as inf:
            await asyncio.wait_for(inf.wait_synced(), 20)
            assert store.count(AUTHORIZATION_POLICY) == 0
            assert inf.reflectors["AuthorizationPolicy"].absent
            assert store.count(SERVICE_ENTRY) == 1
            api.serve(fakeapi.AUTHORIZATION_POLICIES)  # the CRD is installed
            api.put("authorizationpolicies", obj(fakeapi.AUTHORIZATION_POLICIES, "deny",
                                                 "shop", spec={"action": "DENY"}))
            await eventually(lambda: store.get(AUTHORIZATION_POLICY, "shop", "deny")
                             is not None, what="the policy, once its CRD exists")
            await eventually(lambda: api.live_watches("authorizationpolicies") == 1)
            api.unserve("authorizationpolicies")  # and uninstalled: its objects are gone
            await eventually(lambda: store.count(AUTHORIZATION_POLICY) == 0,
                             what="the policy gone with its CRD")
        await api.stop()
    run(body())


def test_a_missing_builtin_kind_is_an_error_not_empty(tmp_path: Path) -> None:
    """Only Istio's CRDs may be absent: a 404 for EndpointSlices is an API problem, retried,
    and the source is not ready (it would serve services without endpoints)."""
    async def body() -> None:
        api = await world(resources=[r for r in CONTROLPLANE_RESOURCES
                                     if r.plural != "endpointslices"])
        async with informers_for(api, tmp_path) as inf:
            await eventually(lambda: sum(1 for r in inf.reflectors.values()
                                         if r.synced.is_set()) == len(KINDS) - 1)
            errors = counter("meshnode_k8s_watch_errors_total",
                             resource="endpointslices.discovery.k8s.io")
            await eventually(lambda: counter("meshnode_k8s_watch_errors_total",
                                             resource="endpointslices.discovery.k8s.io")
                             >= errors + 2, what="retried lists")
            assert not inf.synced() and not inf.ready.is_set()
        await api.stop()
    run(body())


def test_lists_are_paged(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        for i in range(1100):
            api.put("pods", obj(fakeapi.PODS, f"p{i:04}", "load", spec={"nodeName": "n1"}))
        store = ObjectStore()
        async with informers_for(api, tmp_path, store) as inf:
            await asyncio.wait_for(inf.wait_synced(), 10)
            assert store.count(POD) == 1101
            pages = lists(api, POD)
            assert len(pages) == 3 and [bool(q.get("continue")) for q in pages] == [
                False, True, True]
        await api.stop()
    run(body())


def test_a_kubeconfig_file_pointing_at_the_api_server(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        path = tmp_path / "config"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "cp",
            "clusters": [{"name": "other", "cluster": {"server": "http://127.0.0.1:1"}},
                         {"name": "fake", "cluster": {"server": api.url}}],
            "users": [{"name": "cp", "user": {"token": "s3cret-token"}}],
            "contexts": [{"name": "wrong", "context": {"cluster": "other", "user": "cp"}},
                         {"name": "cp", "context": {"cluster": "fake", "user": "cp"}}]}))
        store = ObjectStore()
        async with informers_for(api, tmp_path, store, kubeconfig=str(path)) as inf:
            await asyncio.wait_for(inf.wait_synced(), 20)
            assert inf.client.api_client.configuration.host == api.url
            assert store.count(SERVICE_ENTRY) == 1
        assert api.auth and set(api.auth) == {"Bearer s3cret-token"}
        await api.stop()
    run(body())


def test_a_bad_kubeconfig_fails_at_connect(tmp_path: Path) -> None:
    async def body() -> None:
        with pytest.raises(ConfigException, match="nope: no such file"):
            await KubeInformers.connect(str(tmp_path / "nope"), ObjectStore())
        bad = tmp_path / "bad"
        bad.write_text("apiVersion: v1\nkind: Config\ncurrent-context: missing\n")
        with pytest.raises(ConfigException, match="missing"):
            await KubeInformers.connect(str(bad), ObjectStore())
    run(body())
