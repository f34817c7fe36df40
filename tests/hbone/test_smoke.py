from __future__ import annotations

from typing import Any

from tests.hbone.conftest import Mesh, echo
from tests.hbone.pki import CA


def test_echo_through_tunnel(ca: CA, run: Any) -> None:
    async def body() -> None:
        mesh = await Mesh(ca, echo).start()
        try:
            r, w = await mesh.connect()
            w.write(b"hello mesh")
            w.write_eof()
            assert await r.read() == b"hello mesh"
            w.close()
        finally:
            await mesh.stop()
        assert mesh.inbound[0].peer.service_account == "client"
    run(body())
