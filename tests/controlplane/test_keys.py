"""Node tokens and the CA root on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane import nodeauth, pki


def test_node_token_round_trip_and_tampering() -> None:
    key = b"k" * 32
    token = nodeauth.mint(key, "node-1.example")
    assert nodeauth.verify(key, token) == "node-1.example"
    assert nodeauth.verify(b"j" * 32, token) is None
    prefix, _node, mac = token.split(".")
    other = nodeauth.mint(key, "node-2").split(".")[1]
    assert nodeauth.verify(key, f"{prefix}.{other}.{mac}") is None   # re-targeted
    assert nodeauth.verify(key, "mn1.%%%.%%%") is None
    assert nodeauth.verify(key, "") is None
    md = [("x-other", "1"), ("Authorization", f"Bearer {token}")]
    assert nodeauth.node_from_metadata(key, md) == "node-1.example"
    assert nodeauth.node_from_metadata(key, [("authorization", token)]) is None


def test_token_key_is_created_once(tmp_path: Path) -> None:
    path = tmp_path / "k" / "token.key"
    key = nodeauth.load_or_create_key(path)
    assert len(key) == 32 and nodeauth.load_or_create_key(path) == key
    path.write_text("abcd\n")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        nodeauth.load_or_create_key(path)


def test_root_is_generated_once_and_reloaded(tmp_path: Path) -> None:
    cert, key = tmp_path / "root-cert.pem", tmp_path / "root-key.pem"
    root = pki.load_or_create_root(cert, key, "td")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again = pki.load_or_create_root(cert, key, "td")
    assert again.cert == root.cert


def test_given_root_must_match_its_key_and_be_a_ca(tmp_path: Path) -> None:
    a, b = pki.generate_root("td"), pki.generate_root("td")
    (tmp_path / "a.pem").write_text(a.cert_pem)
    (tmp_path / "b.key").write_bytes(b.key_pem())
    with pytest.raises(pki.PkiError, match="is not the key of"):
        pki.load_root(tmp_path / "a.pem", tmp_path / "b.key")
    leaf_key, leaf_chain = pki.server_cert(a, ["x"], [])
    (tmp_path / "leaf.pem").write_bytes(leaf_chain.split(b"-----END CERTIFICATE-----")[0]
                                        + b"-----END CERTIFICATE-----\n")
    (tmp_path / "leaf.key").write_bytes(leaf_key)
    with pytest.raises(pki.PkiError, match="not a CA"):
        pki.load_root(tmp_path / "leaf.pem", tmp_path / "leaf.key")
