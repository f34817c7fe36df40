"""A tiny real DNS server for tests: answers every query, over UDP and TCP, with one A record.

Hand-built wire format (RFC 1035) keeps the test free of a DNS library.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from types import TracebackType

from tests.kernel.netutil import tcp_listener, udp_socket

ANSWER_IP = "203.0.113.7"


def build_query(name: str, qid: int) -> bytes:
    """A recursive A/IN query for `name`."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def build_answer(query: bytes, ip: str = ANSWER_IP) -> bytes:
    """The query, turned into a response with one A record pointing at the question name."""
    qid = struct.unpack_from("!H", query)[0]
    end = 12
    while query[end] != 0:
        end += query[end] + 1
    question = query[12:end + 5]  # name, its terminating 0, QTYPE, QCLASS
    header = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ip)
    return header + question + record


def answer_ip(qid: int, msg: bytes) -> str:
    """The address in a response from build_answer, after checking it answers `qid`."""
    rid, flags, _qd, ancount = struct.unpack_from("!HHHH", msg)
    assert rid == qid, f"answer id {rid} != query id {qid}"
    assert flags & 0x8000 and ancount == 1, "not a one-record response"
    return socket.inet_ntoa(msg[-4:])


class Resolver:
    """UDP and TCP port 53 in a lab netns, served by one thread until close()."""

    def __init__(self, ns_path: str, ip: str = ANSWER_IP) -> None:
        self.ip = ip
        self.udp = udp_socket(ns_path, 53)
        self.tcp = tcp_listener(ns_path, 53)
        self.udp_queries = 0
        self.tcp_queries = 0
        self.udp_peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-resolver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.udp, self.tcp], [], [], 0.05)
            if self.udp in ready:
                q, peer = self.udp.recvfrom(4096)
                self.udp_queries += 1
                self.udp_peers.append(peer[0])
                self.udp.sendto(build_answer(q, self.ip), peer)
            if self.tcp in ready:
                conn, _ = self.tcp.accept()
                with conn:
                    conn.settimeout(2)
                    self._serve_tcp(conn)

    def _serve_tcp(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack_from("!H", buf)[0]:
                n = struct.unpack_from("!H", buf)[0]
                q, buf = buf[2:2 + n], buf[2 + n:]
                self.tcp_queries += 1
                a = build_answer(q, self.ip)
                conn.sendall(struct.pack("!H", len(a)) + a)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.udp.close()
        self.tcp.close()

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def udp_ask(sock: socket.socket, server: tuple[str, int], query: bytes,
            timeout: float = 2) -> tuple[bytes, tuple[str, int]] | None:
    """Send one query, return (answer, where it came from), or None if nothing came."""
    sock.settimeout(timeout)
    sock.sendto(query, server)
    try:
        data, peer = sock.recvfrom(4096)
    except TimeoutError:
        return None
    return data, (peer[0], peer[1])


def tcp_ask(sock: socket.socket, query: bytes) -> bytes:
    sock.sendall(struct.pack("!H", len(query)) + query)
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + struct.unpack_from("!H", buf)[0]:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError(f"closed after {len(buf)} bytes")
        buf += data
    return buf[2:]
