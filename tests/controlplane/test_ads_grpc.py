"""Delta ADS over real gRPC + TLS on 127.0.0.1, the control plane serving the example manifests:
subscribe, ACK, NACK, reconnect, pushes of manifest edits."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.rpc import status_pb2
from structlog.testing import capture_logs

from controlplane import pki
from testing import mesh_manifests as mm
from tests.controlplane.harness import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    EXAMPLE_FILE,
    AdsClient,
    channel,
    control_plane,
    decode,
    deny_sleep,
    eventually,
    example,
    names,
    run,
)

SLEEP = "Kubernetes//Pod/default/sleep"
ECHO1 = "Kubernetes//Pod/default/echo-1"
ECHO2 = "Kubernetes//Pod/default/echo-2"
SVC = "default/echo.default.svc.cluster.local"


def test_subscribe_both_types_ack_and_silence(tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp, channel(cp) as ch:
            c = AdsClient(ch, cp.node_token("node1"))
            r = await c.subscribe(ADDRESS_TYPE, node={"id": "ztunnel~10.0.0.1~z.ns~ns.svc"})
            assert names(r) == sorted([SLEEP, ECHO1, ECHO2, SVC])
            got = {res.name: decode(res) for res in r.resources}
            echo1 = got[ECHO1].workload
            assert (echo1.uid, echo1.node, echo1.service_account) == (ECHO1, "node2", "echo")
            # The service's selector and the policy's selector pick the echo workloads only.
            for uid in (ECHO1, ECHO2):
                assert list(got[uid].workload.services) == [SVC]
                assert list(got[uid].workload.authorization_policies) == [
                    "default/echo-from-sleep"]
            assert not got[SLEEP].workload.services
            assert not got[SLEEP].workload.authorization_policies
            assert got[SVC].service.hostname == "echo.default.svc.cluster.local"
            await c.ack(r)
            p = await c.subscribe(AUTHORIZATION_TYPE)
            assert names(p) == ["default/echo-from-sleep"]
            assert decode(p.resources[0]).name == "echo-from-sleep"
            await c.ack(p)
            await c.expect_silence()
            (session,) = cp.ads.sessions
            await eventually(lambda: session.types[AUTHORIZATION_TYPE].acks == 1)
            assert session.types[ADDRESS_TYPE].acks == 1
            assert session.node_id == "ztunnel~10.0.0.1~z.ns~ns.svc"
            c.close()
    run(main())


@pytest.mark.parametrize("token", ["", "mn1.bm9kZTE.AAAA", "forged-with-another-key"])
def test_stream_without_a_valid_node_token_is_refused(tmp_path: Path, token: str) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            if token == "forged-with-another-key":
                from controlplane import nodeauth
                tok = nodeauth.mint(b"k" * 32, "node1")
            else:
                tok = token
            async with channel(cp) as ch:
                c = AdsClient(ch, tok)
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    # The server may refuse before our first write lands: either call raises.
                    await c.send(type_url=ADDRESS_TYPE)
                    await c.recv()
                assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    run(main())


def test_client_refuses_a_server_signed_by_another_root(tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            other = pki.generate_root("cluster.local").cert_pem.encode()
            async with channel(cp, root_pem=other) as ch:
                c = AdsClient(ch, cp.node_token("node1"))
                with pytest.raises((grpc.aio.AioRpcError, grpc.aio.UsageError)):
                    await c.send(type_url=ADDRESS_TYPE)
                    await c.recv()
    run(main())


def test_a_nack_is_logged_counted_and_not_answered_nor_resent(tmp_path: Path) -> None:
    """A client that refuses a response (names the resources it could not apply, as the agent
    does): logged with its error, counted, and the refused resources are not sent again.
    (The agent's side, decoding and naming a malformed resource, is tests/xds/test_protocol.py's
    test_nack_names_each_bad_resource_and_applies_the_good_ones.)"""
    async def main() -> None:
        async with control_plane(tmp_path) as cp, channel(cp) as ch:
            c = AdsClient(ch, cp.node_token("node1"))
            r = await c.subscribe(ADDRESS_TYPE)
            assert ECHO1 in names(r)
            with capture_logs() as logs:
                await c.send(type_url=ADDRESS_TYPE, response_nonce=r.nonce,
                             error_detail=status_pb2.Status(
                                 code=3, message=f"{ECHO1}: DecodeError"))
                await c.expect_silence()
                (session,) = cp.ads.sessions
                await eventually(lambda: session.types[ADDRESS_TYPE].nacks == 1)
            nack = [e for e in logs if e["event"] == "ads_nack"]
            assert len(nack) == 1 and nack[0]["error_detail"].startswith(f"{ECHO1}: ")
            assert session.types[ADDRESS_TYPE].acks == 0
            c.close()
    run(main())


def test_reconnect_with_initial_versions_gets_only_what_changed(tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp, channel(cp) as ch:
            c = AdsClient(ch, cp.node_token("node1"))
            r = await c.subscribe(ADDRESS_TYPE)
            await c.ack(r)
            held = {res.name: res.version for res in r.resources}
            c.close()
            # While the client is away: sleep changes node, echo-2 goes away.
            conf = tmp_path / "manifests"
            mm.write(conf, EXAMPLE_FILE, *example(sleep_node="node2", echo_2=False))
            served = cp.store.snapshot[ADDRESS_TYPE]
            await eventually(lambda: ECHO2 not in served
                             and served[SLEEP].version != held[SLEEP], timeout=5)
            c2 = AdsClient(ch, cp.node_token("node1"))
            r2 = await c2.subscribe(ADDRESS_TYPE, initial_resource_versions=held)
            assert names(r2) == [SLEEP]
            assert decode(r2.resources[0]).workload.node == "node2"
            assert list(r2.removed_resources) == [ECHO2]
            # Nothing changed for policies: a versioned reconnect gets an empty answer.
            pol = await c2.subscribe(AUTHORIZATION_TYPE)
            p_held = {res.name: res.version for res in pol.resources}
            c2.close()
            c3 = AdsClient(ch, cp.node_token("node1"))
            again = await c3.subscribe(AUTHORIZATION_TYPE, initial_resource_versions=p_held)
            assert not again.resources and not again.removed_resources
            c3.close()
    run(main())


def test_edits_push_deltas_and_a_file_that_does_not_parse_keeps_its_objects(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            conf = tmp_path / "manifests"
            path = conf / EXAMPLE_FILE
            async with channel(cp) as ch:
                c = AdsClient(ch, cp.node_token("node1"))
                await c.ack(await c.subscribe(ADDRESS_TYPE))
                await c.ack(await c.subscribe(AUTHORIZATION_TYPE))

                # 1. Add a DENY policy: one push, for policies only, carrying just it.
                mm.write(conf, EXAMPLE_FILE, *example(), deny_sleep())
                r = await c.recv()
                assert r.type_url == AUTHORIZATION_TYPE
                assert names(r) == ["default/deny-sleep"] and not r.removed_resources
                await c.ack(r)
                await c.expect_silence()

                # 2. The file broken (an unclosed flow list at echo-1's IP): logged with the
                #    file and line, held back, nothing pushed, its objects stay served.
                good = path.read_text()
                line = good.splitlines().index("  podIP: 10.1.2.2") + 1
                watcher = cp.manifests
                assert watcher is not None
                held = watcher.held_back
                with capture_logs() as logs:
                    path.write_text(good.replace("podIP: 10.1.2.2", "podIP: [10.1.2.2"))
                    await eventually(lambda: any(e["event"] == "manifest_file_invalid"
                                                 for e in logs))
                    await c.expect_silence(0.8)  # past the hold-back and its re-read
                (err,) = [e for e in logs if e["event"] == "manifest_file_invalid"]
                at = re.match(rf"{re.escape(str(path))}:(\d+): ", err["error"])
                assert at is not None and int(at.group(1)) >= line, (err, line)
                assert err["kept"] == len(example()) + 1
                assert watcher.held_back > held
                assert "default/deny-sleep" in cp.store.snapshot[AUTHORIZATION_TYPE]
                assert sorted(cp.store.snapshot[ADDRESS_TYPE]) == sorted(
                    [SLEEP, ECHO1, ECHO2, SVC])

                # 3. Back to the original file: the policy is removed, nothing else moves.
                #    Written by rename, the way editors and ConfigMaps do it.
                mm.write(conf, EXAMPLE_FILE, *example())
                r = await c.recv()
                assert r.type_url == AUTHORIZATION_TYPE
                assert not r.resources and list(r.removed_resources) == ["default/deny-sleep"]
                await c.ack(r)
                await c.expect_silence()
                c.close()
    run(main())
