"""Node authentication: which node is calling (for the CA's node authorization and for ADS).

A node agent sends `authorization: Bearer <node token>` as gRPC metadata (the header ztunnel
sends to istiod). A node token is `mn1.<base64url node name>.<base64url HMAC-SHA256>`, keyed
with the control plane's secret token key: stateless to check, cannot be forged or re-targeted
to another node without the key, and minted by the operator per node
(`meshnode controlplane --token-key FILE --print-node-token NODE`). They work with every
source; a control plane that reads an API server also accepts Kubernetes service-account
tokens, checked by TokenReview (istiod's way: controlplane/auth.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

AUTH_HEADER = "authorization"
PREFIX = "mn1"
_PREFIX = PREFIX
_CONTEXT = b"meshnode node token v1\0"


def mint(key: bytes, node: str) -> str:
    mac = hmac.new(key, _CONTEXT + node.encode(), hashlib.sha256).digest()
    return f"{_PREFIX}.{_b64(node.encode())}.{_b64(mac)}"


def verify(key: bytes, token: str) -> str | None:
    """The node name the token was minted for, or None if it is not one of ours."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _PREFIX:
        return None
    try:
        node = _unb64(parts[1]).decode()
        mac = _unb64(parts[2])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    want = hmac.new(key, _CONTEXT + node.encode(), hashlib.sha256).digest()
    return node if node and hmac.compare_digest(mac, want) else None


def node_from_metadata(key: bytes,
                       metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for k, v in metadata or ():
        if k.lower() == AUTH_HEADER:
            value = v.decode() if isinstance(v, bytes) else v
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return verify(key, token.strip())
    return None


def load_or_create_key(path: Path) -> bytes:
    """The token key file (hex); created with a fresh random key, mode 0600, if absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    key = bytes.fromhex(path.read_text().strip())
    if len(key) < 16:
        raise ValueError(f"{path}: token key must be at least 16 bytes of hex")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
