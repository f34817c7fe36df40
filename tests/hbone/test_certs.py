from __future__ import annotations

import datetime as dt
import os
import ssl

import pytest

from core.spiffe import parse
from proxy.identity.certs import CertBundle, CertStore, NoCertificate
from tests.hbone.pki import CA

ID = "spiffe://cluster.local/ns/a/sa/b"


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_contexts_built_without_files_or_leaked_fds(ca: CA, tmp_path: object) -> None:
    store = CertStore()
    before = _fds()
    store.put(ca.leaf(ID))
    assert _fds() == before  # the memfd was closed once OpenSSL had read it
    ctx = store.server_context(parse(ID))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert store.client_context(parse(ID)).verify_mode == ssl.CERT_REQUIRED
    assert b"PRIVATE KEY" not in repr(store.dump()).encode()


def test_mismatched_key_is_refused(ca: CA) -> None:
    a, b = ca.leaf(ID), ca.leaf(ID)
    with pytest.raises(ValueError, match="does not match"):
        CertBundle.from_pem(a.key_pem, b.chain_pem, ca.pem)


def test_rotation_swaps_contexts_and_keeps_old_ones_usable(ca: CA) -> None:
    store = CertStore()
    store.put(ca.leaf(ID))
    old = store.server_context(parse(ID))
    new_bundle = ca.leaf(ID)
    store.put(new_bundle)
    assert store.server_context(parse(ID)) is not old
    assert store.bundle(parse(ID)) is new_bundle
    old.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)  # still a live context


def test_bad_bundle_keeps_the_old_one(ca: CA) -> None:
    store = CertStore()
    good = ca.leaf(ID)
    store.put(good)
    broken = CertBundle(b"not a key", good.chain_pem, good.roots_pem, good.identity,
                        good.not_before, good.not_after, good.serial)
    with pytest.raises(ssl.SSLError):
        store.put(broken)
    assert store.bundle(good.identity) is good


def test_missing_and_expired(ca: CA) -> None:
    store = CertStore()
    with pytest.raises(NoCertificate):
        store.server_context(parse(ID))
    store.put(ca.leaf(ID, hours=-0.01))  # not_after already passed (not_before is -5 min)
    with pytest.raises(NoCertificate, match="expired"):
        store.client_context(parse(ID))
    store.remove(parse(ID))
    with pytest.raises(NoCertificate):
        store.bundle(parse(ID))


def test_refresh_at_is_half_life(ca: CA) -> None:
    b = ca.leaf(ID, hours=2)
    assert b.refresh_at() - b.not_before == (b.not_after - b.not_before) / 2
    assert not b.expired()
    assert b.expired(b.not_after + dt.timedelta(seconds=1))
