"""The pod source against the fake API, with a stub Enroller: labels -> enroll/release,
annotations, and the watch protocol (bookmarks, 410 Gone and relist, errors, bad events)."""

from __future__ import annotations

from pathlib import Path

from agent.k8s.labels import ANNOTATION
from testing.fakeapi import FakeApi, namespace, pod
from tests.k8s.conftest import NODE, StubEnroller, eventually, run, source_for

ON = {"meshnode.io/dataplane-mode": "enabled"}
OFF = {"meshnode.io/dataplane-mode": "disabled"}


async def world() -> FakeApi:
    api = await FakeApi().start()
    api.put("namespaces", namespace("mesh", ON))
    api.put("namespaces", namespace("plain"))
    return api


def test_initial_list_enrolls_labelled_pods_only(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.put("pods", pod("a", "mesh", ip="10.0.0.1", uid="a"))
        api.put("pods", pod("b", "plain", ip="10.0.0.2", labels=ON, uid="b"))
        api.put("pods", pod("c", "plain", ip="10.0.0.3", uid="c"))
        api.put("pods", pod("d", "mesh", ip="10.0.0.4", labels=OFF, uid="d"))
        api.put("pods", pod("e", "mesh", ip="10.0.0.5", host_network=True, uid="e"))
        api.put("pods", pod("f", "mesh", node="node2", ip="10.0.0.6", uid="f"))
        api.put("pods", pod("g", "mesh", phase="Succeeded", ip="10.0.0.7", uid="g"))
        enr = StubEnroller(tmp_path / "pods")
        async with source_for(api, enr, tmp_path):
            await eventually(lambda: api.annotation("a") == api.annotation("b") == "enabled",
                             what="annotations on a and b")
            assert enr.enrolled_names() == {"a", "b"}
            [req_a] = [r for r in enr.added if r["pod"]["name"] == "a"]
            assert req_a == {"container_id": "k8s-a", "netns": "/fake/netns/10.0.0.1",
                             "ifname": "", "ips": ["10.0.0.1"],
                             "pod": {"namespace": "mesh", "name": "a", "uid": "a"}}
            for uid in "cdefg":
                assert api.annotation(uid) is None
            # Only this node's pods were asked for.
            pod_lists = [q for m, p, q in api.requests if p == "/api/v1/pods"]
            assert pod_lists and all(q["fieldSelector"] == f"spec.nodeName={NODE}"
                                     for q in pod_lists)
            assert api.pod_patches("a") == [{"metadata": {"annotations": {
                ANNOTATION: "enabled"}}}]
            assert [p["content_type"] for p in api.patches if p["resource"] == "pods"] == [
                "application/strategic-merge-patch+json"] * 2
        await api.stop()
    run(body())


def test_namespace_label_enrolls_all_its_pods_and_unlabel_releases_them(
        tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.put("pods", pod("p1", "plain", ip="10.0.1.1", uid="p1"))
        api.put("pods", pod("p2", "plain", ip="10.0.1.2", uid="p2"))
        api.put("pods", pod("other", "mesh", ip="10.0.1.3", uid="other"))
        enr = StubEnroller(tmp_path / "pods")
        async with source_for(api, enr, tmp_path):
            await eventually(lambda: enr.enrolled_names() == {"other"})
            api.relabel("namespaces", "ns-plain", ON)
            await eventually(lambda: enr.enrolled_names() == {"other", "p1", "p2"},
                             what="namespace label enrolls p1, p2")
            await eventually(lambda: api.annotation("p1") == api.annotation("p2") == "enabled")
            api.relabel("namespaces", "ns-plain", {})
            await eventually(lambda: enr.enrolled_names() == {"other"},
                             what="unlabel releases p1, p2")
            assert sorted(enr.deleted) == ["k8s-p1", "k8s-p2"]
            await eventually(lambda: api.annotation("p1") is None and
                             api.annotation("p2") is None)
            assert api.pod_patches("p1")[-1] == {"metadata": {"annotations": {
                ANNOTATION: None}}}
            assert api.annotation("other") == "enabled"
        await api.stop()
    run(body())


def test_pod_opt_out_wins_over_namespace_and_releases_a_running_pod(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.put("pods", pod("web", "mesh", uid="web"))
        enr = StubEnroller(tmp_path / "pods")
        async with source_for(api, enr, tmp_path):
            await eventually(lambda: api.annotation("web") == "enabled")
            api.relabel("pods", "web", OFF)
            await eventually(lambda: enr.enrolled_names() == set(), what="opt-out releases")
            await eventually(lambda: api.annotation("web") is None)
            api.relabel("pods", "web", {})  # back to the namespace's say
            await eventually(lambda: enr.enrolled_names() == {"web"})
        await api.stop()
    run(body())


def test_istio_labels_count_only_in_the_istio_profile(tmp_path: Path) -> None:
    async def body(istio: bool) -> set[str]:
        api = await FakeApi().start()
        api.put("namespaces", namespace("amb", {"istio.io/dataplane-mode": "ambient"}))
        api.put("pods", pod("in", "amb", ip="10.0.2.1", uid="in"))
        api.put("pods", pod("out", "amb", ip="10.0.2.2", uid="out",
                            labels={"istio.io/dataplane-mode": "none"}))
        enr = StubEnroller(tmp_path / f"pods-{istio}")
        async with source_for(api, enr, tmp_path, istio=istio) as src:
            await eventually(src.synced)
            await eventually(lambda: src.queue.__len__() == 0)
            if istio:
                await eventually(lambda: enr.enrolled_names() == {"in"})
            result = enr.enrolled_names()
        await api.stop()
        return result

    seen: dict[bool, set[str]] = {}

    async def both() -> None:
        seen[True] = await body(True)
        seen[False] = await body(False)
    run(both())
    assert seen == {True: {"in"}, False: set()}


def test_deleted_pod_is_released(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.put("pods", pod("gone", "mesh", uid="gone"))
        enr = StubEnroller(tmp_path / "pods")
        async with source_for(api, enr, tmp_path):
            await eventually(lambda: enr.enrolled_names() == {"gone"})
            api.delete("pods", "gone")
            await eventually(lambda: enr.deleted == ["k8s-gone"], what="release on DELETED")
        await api.stop()
    run(body())


def test_failed_enrollment_is_pending_then_retried_to_enabled(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.put("pods", pod("slow", "mesh", uid="slow"))
        enr = StubEnroller(tmp_path / "pods")
        enr.fail_adds = 2  # the node proxy is not there yet
        async with source_for(api, enr, tmp_path):
            await eventually(lambda: api.annotation("slow") == "enabled", what="enabled")
        assert len(enr.added) == 3
        assert [b["metadata"]["annotations"][ANNOTATION] for b in api.pod_patches("slow")] == [
            "pending", "enabled"]
        await api.stop()
    run(body())


def test_pods_enrolled_by_the_cni_are_annotated_and_stale_records_released(
        tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.put("pods", pod("cni", "mesh", uid="cni"))
        enr = StubEnroller(tmp_path / "pods")
        # What the CNI path (and an earlier agent) left: one live pod, one deleted meanwhile.
        enr.add({"container_id": "sandbox1", "netns": "/x", "ips": ["10.0.0.1"],
                 "pod": {"namespace": "mesh", "name": "cni", "uid": "cni"}})
        enr.add({"container_id": "sandbox2", "netns": "/y", "ips": ["10.0.0.9"],
                 "pod": {"namespace": "mesh", "name": "vanished", "uid": "vanished"}})
        # A runtime that passes no K8S_POD_UID: matched by namespace/name.
        api.put("pods", pod("nouid", "mesh", uid="nouid", ip="10.0.0.3"))
        enr.add({"container_id": "sandbox3", "netns": "/z", "ips": ["10.0.0.3"],
                 "pod": {"namespace": "mesh", "name": "nouid", "uid": ""}})
        enr.added.clear()
        async with source_for(api, enr, tmp_path):
            await eventually(lambda: api.annotation("cni") == "enabled")
            await eventually(lambda: api.annotation("nouid") == "enabled")
            await eventually(lambda: enr.deleted == ["sandbox2"])
            assert enr.added == []  # not enrolled twice
            api.delete("pods", "nouid")
            await eventually(lambda: enr.deleted == ["sandbox2", "sandbox3"])
        await api.stop()
    run(body())


def test_cni_policy_is_unknown_before_sync_and_follows_labels_after(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.put("pods", pod("yes", "mesh", uid="yes"))
        api.put("pods", pod("no", "plain", uid="no"))
        api.fail_next("GET /api/v1/namespaces", 500, times=3)  # hold the namespace list back
        enr = StubEnroller(tmp_path / "pods")
        async with source_for(api, enr, tmp_path) as src:
            assert src.selects("mesh", "yes") is None  # not synced: the CNI fails closed
            await eventually(src.synced)
            assert src.selects("mesh", "yes") is True
            assert src.selects("plain", "no") is False
            assert src.selects("mesh", "unseen") is None
        await api.stop()
    run(body())


def test_bookmark_advances_the_resource_version_used_to_resume(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        enr = StubEnroller(tmp_path / "pods")
        async with source_for(api, enr, tmp_path) as src:
            await eventually(src.synced)
            await eventually(lambda: api.watch_count("pods") == 1)
            before = src.pods.resource_version
            assert all(q.get("allowWatchBookmarks", "").lower() == "true"
                       for _, p, q in api.requests if "watch" in q)
            api.bump(50)  # the cluster moved on; nothing for our pods
            api.bookmark("pods")
            target = str(api.rv)
            await eventually(lambda: src.pods.resource_version == target,
                             what=f"resourceVersion {before} -> {target}")
            api.close_watches("pods")  # the server ends the watch: resume, no relist
            await eventually(lambda: api.watch_count("pods") == 2)
            last = [q for _, p, q in api.requests if p == "/api/v1/pods" and "watch" in q][-1]
            assert last["resourceVersion"] == target
            lists = [q for _, p, q in api.requests if p == "/api/v1/pods" and "watch" not in q]
            assert len(lists) == 1
        await api.stop()
    run(body())


def test_410_on_the_live_watch_relists_and_applies_the_diff(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.put("pods", pod("stays", "mesh", uid="stays", ip="10.0.3.1"))
        api.put("pods", pod("goes", "mesh", uid="goes", ip="10.0.3.2"))
        enr = StubEnroller(tmp_path / "pods")
        async with source_for(api, enr, tmp_path) as src:
            await eventually(lambda: enr.enrolled_names() == {"stays", "goes"})
            # While the watch cache is behind: one pod deleted, one added, both unseen.
            api.delete("pods", "goes", notify=False)
            api.put("pods", pod("new", "mesh", uid="new", ip="10.0.3.3"), notify=False)
            api.compact()
            api.expire("pods")
            await eventually(lambda: enr.enrolled_names() == {"stays", "new"},
                             what="diff after relist")
            assert enr.deleted == ["k8s-goes"]
            assert set(src.pods.cache) == {"stays", "new"}
            # The relist's version can trail a change stamped right after it (a loaded
            # machine); the resumed watch brings the cache up to the API's version.
            await eventually(lambda: src.pods.resource_version == str(api.rv),
                             what="resume at the API's version")
            lists = [q for _, p, q in api.requests if p == "/api/v1/pods" and "watch" not in q]
            assert len(lists) == 2
        await api.stop()
    run(body())


def test_410_http_status_on_reconnect_relists(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.gone_as_http = True
        api.put("pods", pod("old", "plain", uid="old", labels=ON))
        enr = StubEnroller(tmp_path / "pods")
        async with source_for(api, enr, tmp_path):
            await eventually(lambda: enr.enrolled_names() == {"old"})
            api.delete("pods", "old", notify=False)
            api.relabel("namespaces", "ns-plain", ON, notify=False)
            api.put("pods", pod("fresh", "plain", uid="fresh"), notify=False)
            api.compact()
            api.close_watches()  # reconnect from a compacted version: HTTP 410
            await eventually(lambda: enr.enrolled_names() == {"fresh"},
                             what="relist of both resources")
            assert enr.deleted == ["k8s-old"]
        await api.stop()
    run(body())


def test_errors_are_retried_with_backoff(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.fail_next("GET /api/v1/pods", 500, times=2)          # the first lists
        enr = StubEnroller(tmp_path / "pods")
        async with source_for(api, enr, tmp_path) as src:
            await eventually(src.synced, what="sync despite failing lists")
            await eventually(lambda: api.watch_count("pods") >= 1)
            api.fail_next("GET /api/v1/pods?watch", 503, times=3)  # and reconnects
            api.close_watches("pods")
            await eventually(lambda: api.watch_count("pods") >= 5, what="watch retries")
            api.put("pods", pod("late", "mesh", uid="late"))
            await eventually(lambda: enr.enrolled_names() == {"late"})
        await api.stop()
    run(body())


def test_malformed_events_and_objects_do_not_crash_the_watch(tmp_path: Path) -> None:
    async def body() -> None:
        api = await world()
        api.objects["pods"]["bad"] = {"metadata": {"name": "no-uid-in-list"}}  # bad list item
        enr = StubEnroller(tmp_path / "pods")
        async with source_for(api, enr, tmp_path) as src:
            await eventually(src.synced)
            await eventually(lambda: api.watch_count("pods") == 1)
            for line in (b"not json at all\n", b'{"type": "ADDED"}\n', b"[1, 2]\n",
                         b'{"type": "ADDED", "object": "string"}\n',
                         b'{"type": "ADDED", "object": {"metadata": {"name": "x"}}}\n',
                         b'{"type": "WHATEVER", "object": {"metadata": '
                         b'{"name": "x", "uid": "x"}}}\n',
                         b'{"type": "ADDED", "object": {"metadata": {"name": "y", "uid": "y",'
                         b' "namespace": "mesh", "labels": "not-a-map"}, "spec": 7,'
                         b' "status": [1]}}\n',
                         b'{"type": "BOOKMARK", "object": {}}\n'):
                api.inject("pods", line)
            api.put("pods", pod("ok", "mesh", uid="ok"))
            await eventually(lambda: "ok" in enr.enrolled_names(), what="valid event after junk")
            assert api.watch_count("pods") == 1, "the watch should have survived"
            assert "y" in src.pods.cache and "bad" not in src.pods.cache
        await api.stop()
    run(body())
