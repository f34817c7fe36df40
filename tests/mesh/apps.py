"""The pods' applications: an echo server that records its clients, and clients."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading

from core.netns import entered
from testing.lab import Node


class EchoServer:
    def __init__(self, node: Node, port: int) -> None:
        with entered(node.path):
            self.sock = socket.create_server(("0.0.0.0", port))
        self.peers: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, addr = self.sock.accept()
            except OSError:
                return
            self.peers.append(addr[0])
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c: socket.socket) -> None:
        with c:
            try:
                while data := c.recv(65536):
                    c.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would leave the
        # listener alive in the kernel until that accept returns (the port stays taken).
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def connect(node: Node, ip: str, port: int, timeout: float = 5) -> socket.socket:
    with entered(node.path):
        s = socket.socket()
    s.settimeout(timeout)
    s.connect((ip, port))
    return s


def exchange(node: Node, ip: str, port: int, payload: bytes, timeout: float = 5) -> str:
    """Send payload, half-close, read the echo to EOF; sha256 of what came back ("" when
    the connection was refused, reset or timed out). A test that expects a failure asserts
    its kind with `outcome()`, never with a falsy `exchange()`."""
    kind, digest = outcome(node, ip, port, payload, timeout)
    return digest if kind == "echo" else ""


def outcome(node: Node, ip: str, port: int, payload: bytes,
            timeout: float = 5) -> tuple[str, str]:
    """What one exchange met: ("echo", sha256 of the reply), or ("refused"|"reset"|
    "closed"|"timeout", "") (closed: an orderly EOF with no reply byte), or
    ("error", "<OSError text>") for anything else, so an assertion names what it expects."""
    try:
        s = connect(node, ip, port, timeout)
    except ConnectionRefusedError:
        return "refused", ""
    except ConnectionResetError:  # the RST came before connect() read the socket's state
        return "reset", ""
    except TimeoutError:
        return "timeout", ""
    except OSError as exc:
        return "error", str(exc)
    h = hashlib.sha256()
    got = 0
    send_reset: list[bool] = []
    with s:
        def send() -> None:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except ConnectionResetError:
                # A socket reports a reset to one call only: when the sender takes it, the
                # reader meets a plain EOF after it.
                send_reset.append(True)
            except OSError:
                pass  # the reader sees what happened
        sender = threading.Thread(target=send)
        sender.start()
        try:
            while data := s.recv(1 << 16):
                h.update(data)
                got += len(data)
        except ConnectionResetError:
            return "reset", ""
        except TimeoutError:
            return "timeout", ""
        except OSError as exc:
            return "error", str(exc)
        finally:
            sender.join()
    if got:
        return "echo", h.hexdigest()
    return ("reset", "") if send_reset else ("closed", "")


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()
