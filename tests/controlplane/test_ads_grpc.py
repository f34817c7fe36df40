"""Delta ADS over real gRPC + TLS on 127.0.0.1: subscribe, ACK, NACK, reconnect, file pushes."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import status_pb2
from structlog.testing import capture_logs

from controlplane import pki
from tests.controlplane.harness import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    EXAMPLE,
    AdsClient,
    channel,
    control_plane,
    decode,
    eventually,
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
            assert decode(r.resources[0]).workload.uid == ECHO1
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


def test_malformed_resource_is_nacked_and_not_resent(tmp_path: Path) -> None:
    text = EXAMPLE.read_text() + (
        "debug:\n  malformed_resources:\n    - {type: address, name: bad-1}\n")

    async def main() -> None:
        async with control_plane(tmp_path, text) as cp, channel(cp) as ch:
            c = AdsClient(ch, cp.node_token("node1"))
            r = await c.subscribe(ADDRESS_TYPE)
            assert "bad-1" in names(r)
            errors = []
            for res in r.resources:   # what a real client does: decode each, name failures
                try:
                    decode(res)
                except Exception as exc:
                    errors.append(f"{res.name}: {type(exc).__name__}")
            assert [e.split(":")[0] for e in errors] == ["bad-1"]
            with capture_logs() as logs:
                await c.send(type_url=ADDRESS_TYPE, response_nonce=r.nonce,
                             error_detail=status_pb2.Status(code=3,
                                                            message="; ".join(errors)))
                await c.expect_silence()
                (session,) = cp.ads.sessions
                await eventually(lambda: session.types[ADDRESS_TYPE].nacks == 1)
            nack = [e for e in logs if e["event"] == "ads_nack"]
            assert nack and nack[0]["error_detail"].startswith("bad-1: ")
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
            mesh = tmp_path / "mesh.yaml"
            text = EXAMPLE.read_text().replace("node: node1\n    labels: {app: sleep}",
                                               "node: node2\n    labels: {app: sleep}")
            text = text[:text.index("  - name: echo-2")] + text[text.index("policies:"):]
            version = cp.store.version
            mesh.write_text(text)
            await eventually(lambda: cp.store.version == version + 1)
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


def test_file_edits_push_deltas_and_a_bad_file_keeps_the_last_good_mesh(tmp_path: Path) -> None:
    async def main() -> None:
        async with control_plane(tmp_path) as cp:
            mesh = tmp_path / "mesh.yaml"
            good = EXAMPLE.read_text()
            async with channel(cp) as ch:
                c = AdsClient(ch, cp.node_token("node1"))
                await c.ack(await c.subscribe(ADDRESS_TYPE))
                await c.ack(await c.subscribe(AUTHORIZATION_TYPE))

                # 1. Add a DENY policy: one push, for policies only, carrying just it.
                mesh.write_text(good + """\
  - name: deny-sleep
    namespace: default
    action: deny
    rules:
      - from:
          - principals: [cluster.local/ns/default/sa/sleep]
""")
                r = await c.recv()
                assert r.type_url == AUTHORIZATION_TYPE
                assert names(r) == ["default/deny-sleep"] and not r.removed_resources
                await c.ack(r)
                await c.expect_silence()

                # 2. A bad file: logged with line and field, nothing pushed, old mesh served.
                with capture_logs() as logs:
                    mesh.write_text(good.replace("ips: [10.1.2.2]", "ips: [10.1.2.256]"))
                    await eventually(lambda: cp.watcher.rejects == 1)
                    await c.expect_silence()
                errs = [e for e in logs if e["event"] == "mesh_file_rejected"]
                assert "mesh.yaml:24: workloads[1].ips[0]" in errs[0]["error"]
                assert "default/deny-sleep" in cp.store.snapshot[AUTHORIZATION_TYPE]

                # 3. Back to the original file: the policy is removed, nothing else moves.
                #    Written by rename, the way editors and ConfigMaps do it.
                tmp = tmp_path / ".mesh.yaml.tmp"
                tmp.write_text(good)
                tmp.rename(mesh)
                r = await c.recv()
                assert r.type_url == AUTHORIZATION_TYPE
                assert not r.resources and list(r.removed_resources) == ["default/deny-sleep"]
                await c.ack(r)
                await c.expect_silence()
                c.close()
    run(main())
