"""`meshnode demo`, stage 1: the redirect engine end to end in two namespaces.

A client netns is captured; its connection to the server lands on a stand-in for the node
proxy at 15001, which reads the original destination and forwards with the proxy mark, so
the rules let it through. Then the rules are shown with their counters, and all is removed.
Later issues replace the stand-in with the real proxy, agent and CNI path.
"""

from __future__ import annotations

import socket
import sys
import threading

from agent.lab import Lab
from agent.redirect import backend as engine
from agent.redirect.netns import entered
from agent.redirect.spec import PROXY_MARK, RedirectSpec
from proxy.origdst import original_dst


def _step(n: int, total: int, text: str) -> None:
    print(f"[{n}/{total}] {text}", flush=True)


def _echo_server(sock: socket.socket) -> None:
    conn, _ = sock.accept()
    with conn:
        data = conn.recv(1024)
        conn.sendall(b"echo: " + data)


def _standin_proxy(sock: socket.socket, client_ns: str, seen: list[tuple[str, int]]) -> None:
    conn, _ = sock.accept()
    with conn:
        dst = original_dst(conn)
        seen.append(dst)
        with entered(client_ns):  # connect from the pod's netns so the source stays the pod's
            up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with up:
            up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PROXY_MARK)
            up.settimeout(5)
            up.connect(dst)
            up.sendall(conn.recv(1024))
            conn.sendall(up.recv(1024))


def run_demo(backend: str, flavour: str) -> int:
    total = 6
    impl = engine.make_backend(backend, flavour)
    spec = RedirectSpec()
    print(f"meshnode demo — redirect engine ({impl.name})\n")
    with Lab("demo") as lab:
        client, server = lab.node("client"), lab.node("server")
        lab.link(client, server)
        _step(1, total, f"namespaces: {client.name} ({client.ip4}) <-veth-> "
                        f"{server.name} ({server.ip4})")
        with entered(server.path):
            srv = socket.create_server(("0.0.0.0", 80))
        threading.Thread(target=_echo_server, args=(srv,), daemon=True).start()
        _step(2, total, f"server: echo listener on {server.ip4}:80")

        engine.apply(client.path, spec, impl)
        _step(3, total, f"applied {impl.name} redirection in the client netns")

        with entered(client.path):
            lsn = socket.create_server(("0.0.0.0", spec.outbound_port))
        seen: list[tuple[str, int]] = []
        threading.Thread(target=_standin_proxy, args=(lsn, client.path, seen),
                         daemon=True).start()
        _step(4, total, f"stand-in proxy on :{spec.outbound_port} inside the client netns")

        with entered(client.path):
            c = socket.create_connection((server.ip4, 80), timeout=5)
        with c:
            c.sendall(b"hello")
            reply = c.recv(1024)
        ok = bool(seen) and seen[0] == (server.ip4, 80) and reply == b"echo: hello"
        orig = f"{seen[0][0]}:{seen[0][1]}" if seen else "none (not captured)"
        _step(5, total, f"client -> {server.ip4}:80 was captured at :{spec.outbound_port}; "
                        f"original destination {orig}; reply {reply.decode(errors='replace')!r}")

        state = engine.read(client.path, spec, impl)
        _step(6, total, "rules with counters (meshnode redirect show):")
        for key, rules in state.rules.chains.items():
            for r in rules:
                if r.packets:
                    print(f"    {r.packets:>4} pkts {r.bytes:>6} B  {key}: {r.text}")
        removed = engine.remove(client.path, spec, impl)
        print(f"\ncleanup: removed {len(removed)} objects of ours; namespaces deleted")
        srv.close()
        lsn.close()
    print(f"\nverdict: {'PASS' if ok else 'FAIL'} — connection "
          f"{'captured and delivered' if ok else 'not captured as expected'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_demo("nftables", "auto"))
