"""The delta xDS state of one ADS stream: subscriptions, what the client holds, nonces.

Pure logic (no gRPC), so every protocol rule is unit-testable. Rules followed (envoy
xds_protocol.rst, and istiod's behaviour where the spec leaves room):

* Wildcard: the first request of a type that subscribes to nothing (legacy), or any request
  that subscribes to `*`; `*` in unsubscribe ends it (ztunnel's on-demand mode sends both).
* `initial_resource_versions` on a stream's first request of a type says what the client
  already holds: only resources whose version differs are sent, and names it holds that we do
  not have are sent as removals.
* An explicitly subscribed name is always (re)sent, even if we think the client has it; a
  subscribed name that does not exist is answered with a removal.
* ACK/NACK: a request carrying the last nonce we sent is the answer to that response; with
  error_detail it is a NACK, which is logged and not answered (the same bytes would be
  rejected again; the next change of those resources is sent as usual). Stale nonces are
  ignored but their subscription changes are honoured.
* Every request that changes subscriptions, and the first one of each type, gets a response,
  even an empty one: the client's readiness waits for it.

Cost: a session that is `fed` (the ADS server passes it every change of the store, `absorb`)
computes a push from the names that changed only, and for a wildcard type keeps no copy of
what the client holds: after any response that is exactly the served snapshot, plus the
changes since (each with the version served before it). So a push costs each stream
O(change), not O(mesh), and a stream's memory does not grow with the mesh. Without feeding
(the unit tests), every response compares the whole snapshot with `known`. Responses are
protobuf bytes (controlplane/wire.py): the streams that read the same changes share one
response's bytes, each with its own nonce.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from controlplane import metrics
from controlplane.resources import SERVED_TYPES, Changes, Entry, Snapshot
from controlplane.wire import Response, resource

log = structlog.get_logger("controlplane.ads")

WILDCARD = "*"
# Nonces only need to be unique among the responses a stream may still ACK: a counter (this
# process's, random-prefixed) does that for the cost of an addition, not of a random uuid.
_NONCE_PREFIX = uuid.uuid4().hex[:6]
_NONCES = itertools.count()


@dataclass
class TypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)     # explicit subscriptions (names or aliases)
    known: dict[str, str] = field(default_factory=dict)  # name -> version the client holds
    force: set[str] = field(default_factory=set)     # (re)send these whatever the versions say
    nonce: str = ""                                  # the last nonce sent for this type
    acks: int = 0
    nacks: int = 0
    # Fed sessions only. synced: the client holds exactly the served snapshot of this type
    # (as of the last response) but for `pending`, so `known` is not kept. pending: names
    # changed since the last response -> the version served before (None: not served).
    synced: bool = False
    pending: dict[str, str | None] = field(default_factory=dict)
    # The first request's initial_resource_versions until the first response. Read where it
    # is (the request's map) when only compared: a reconnecting agent lists every resource
    # it holds, and copying 100,000 names into a dict per stream is memory the heap keeps.
    initial: Mapping[str, str] | None = None


@dataclass(eq=False)  # identity semantics: the server keeps live sessions in a set
class Session:
    peer: str
    node_name: str
    node_id: str = ""
    types: dict[str, TypeState] = field(default_factory=dict)
    # Every change of the store is passed to `absorb` before each on_request/on_snapshot.
    fed: bool = False

    def absorb(self, changes: Changes) -> None:
        """The store's changes since the last call (ChangeFeed.take). The dicts given are
        kept, never changed: streams that read the same changes share them (and the
        response they make, `_shared_delta`)."""
        for type_url, names in changes.items():
            st = self.types.get(type_url)
            if st is not None:  # a type asked later starts from the whole snapshot
                # The first version seen of a name is what the client holds.
                st.pending = {**names, **st.pending} if st.pending else names

    def may_respond(self, req: Any) -> bool:
        """Whether `on_request(req)` can answer (the first request of a type, a subscription
        change) rather than only take an ACK or NACK: only then does it need the changes
        absorbed first (an ACK, most requests by far, reads nothing)."""
        return req.type_url in SERVED_TYPES and (
            req.type_url not in self.types or bool(req.resource_names_subscribe)
            or bool(req.resource_names_unsubscribe))

    def on_request(self, req: Any, snap: Snapshot, push_version: int) -> list[Response]:
        """Handle one DeltaDiscoveryRequest; return the responses to send (0 or 1)."""
        type_url = req.type_url
        if req.HasField("node") and req.node.id:
            self.node_id = req.node.id
        if type_url not in SERVED_TYPES:
            log.warning("ads_unknown_type", peer=self.peer, type_url=type_url)
            return []
        st = self.types.get(type_url)
        first = st is None
        if st is None:
            st = self.types[type_url] = TypeState(wildcard=not req.resource_names_subscribe,
                                                  initial=req.initial_resource_versions)
        self._answer(st, req, type_url)
        changed = self._subscribe(st, req, first)
        if not first and not changed:
            return []
        resp = self._respond(st, type_url, snap, push_version)
        return [] if resp is None else [resp]

    def on_snapshot(self, snap: Snapshot, push_version: int) -> list[Response]:
        """After a mesh change: a response per type whose delta for this client is non-empty."""
        out = []
        for type_url, st in self.types.items():
            resp = self._respond(st, type_url, snap, push_version, skip_empty=True)
            if resp is not None:
                out.append(resp)
        return out

    def _answer(self, st: TypeState, req: Any, type_url: str) -> None:
        nonce = req.response_nonce
        if not nonce:
            return
        if nonce != st.nonce:
            log.debug("ads_stale_nonce", peer=self.peer, type_url=type_url, nonce=nonce,
                      expected=st.nonce)
            return
        if req.HasField("error_detail"):
            st.nacks += 1
            metrics.NACKS.labels(type_url=type_url).inc()
            log.warning("ads_nack", peer=self.peer, node=self.node_name, type_url=type_url,
                        nonce=nonce, code=req.error_detail.code,
                        error_detail=req.error_detail.message)
        else:
            st.acks += 1
            log.debug("ads_ack", peer=self.peer, type_url=type_url, nonce=nonce)

    def _subscribe(self, st: TypeState, req: Any, first: bool) -> bool:
        subs = list(req.resource_names_subscribe)
        unsubs = list(req.resource_names_unsubscribe)
        for name in subs:
            if name == WILDCARD:
                st.wildcard = True
            else:
                st.names.add(name)
                # A name subscribed on a reconnect with its version is not forced: that is
                # exactly what initial_resource_versions is for.
                if not (first and name in req.initial_resource_versions):
                    st.force.add(name)
        for name in unsubs:
            if name == WILDCARD:
                st.wildcard = False
            else:
                st.names.discard(name)
                st.force.discard(name)
                if st.wildcard:
                    # Still covered by the wildcard: the spec wants it sent (or removed) again.
                    st.force.add(name)
        if first and not st.wildcard:
            st.names.update(req.initial_resource_versions)
        return bool(subs or unsubs)

    def _respond(self, st: TypeState, type_url: str, snap: Snapshot, push_version: int,
                 skip_empty: bool = False) -> Response | None:
        entries = snap.get(type_url, {})
        shared = None
        held, st.initial = st.initial, None
        if held is not None:
            if self.fed and st.wildcard and not st.names and not st.force and not skip_empty:
                st.known = {}  # compared in place below, then the client is synced
            else:
                st.known, held = dict(held), None  # compared and updated below
        if skip_empty and self.fed and not st.force:
            # A push after a change: only the changed names can differ.
            if st.synced:  # the same changes make the same response, whoever asks
                send, removed, shared = _shared_delta(st, type_url, entries, push_version)
            else:
                send, removed = _changed(st, entries)
        else:
            if st.synced:
                st.known, st.synced = _held(entries, st.pending), False
            if st.wildcard and not st.names and not st.force:
                send, removed = _against_all(st.known if held is None else held, entries)
            else:
                send, removed = _against_wanted(st, entries)
        st.force.clear()
        st.pending = {}
        if self.fed and st.wildcard:
            # After this response the client holds the snapshot as served now.
            st.known, st.synced = {}, True
        if skip_empty and not send and not removed:
            return None
        if not st.synced:
            for n in send:
                st.known[n] = entries[n].version
                if not st.wildcard:
                    # A name reached through an alias is now a subscription of its own
                    # (istiod does the same), so its later changes and removal reach the
                    # client.
                    st.names.add(n)
            for n in removed:
                st.known.pop(n, None)
        st.nonce = f"{push_version}-{_NONCE_PREFIX}{next(_NONCES):x}"
        if shared is not None:
            return shared.with_nonce(st.nonce)
        return _response(type_url, push_version, send, removed, entries, st.nonce)


def _against_wanted(st: TypeState, entries: dict[str, Entry]) -> tuple[list[str], list[str]]:
    """The whole comparison: subscribed names, aliases, forced names."""
    wanted, absent = _wanted(st, entries)
    send = sorted(n for n in wanted if n in st.force or st.known.get(n) != entries[n].version)
    removed = sorted(n for n in st.known if n not in entries and (st.wildcard or n in st.names))
    removed += sorted(n for n in absent if n in st.force and n not in removed)
    if not st.wildcard:
        # Names the client no longer subscribes to are simply forgotten.
        for n in [n for n in st.known if n not in wanted and n not in st.names]:
            del st.known[n]
    return send, removed


def _against_all(known: Mapping[str, str], entries: dict[str, Entry]) -> tuple[list[str],
                                                                           list[str]]:
    """A wildcard-only subscription (every agent's): all of the snapshot, compared in its own
    order (no set of wanted names: a reconnect of a big mesh costs half as much)."""
    send = [n for n, e in entries.items() if known.get(n) != e.version]
    send.sort()
    if len(known) <= len(entries) - len(send):
        return send, []  # that many held at the served version: every held name is served
    return send, sorted(n for n in known if n not in entries)


# (id of the pending changes, type, push version) -> (those changes, what they make): the
# synced streams woken by a change mostly share their pending changes (ChangeFeed.take).
# The changes are kept in the value, so their id is not reused while they are cached.
_DELTAS: dict[tuple[int, str, int], tuple[dict[str, str | None], list[str], list[str],
                                          Response]] = {}
DELTAS_MAX = 1024


def _shared_delta(st: TypeState, type_url: str, entries: dict[str, Entry],
                  push_version: int) -> tuple[list[str], list[str], Response | None]:
    """`_changed` of a synced (wildcard) type and its response's bytes, computed once for
    every stream with the same pending changes at this push version (a synced client holds
    exactly the snapshot but for them, so nothing else of the stream counts)."""
    if not st.pending:
        return [], [], None
    key = (id(st.pending), type_url, push_version)
    hit = _DELTAS.get(key)
    if hit is not None and hit[0] is st.pending:
        return hit[1], hit[2], hit[3]
    send, removed = _changed(st, entries)
    shared = _response(type_url, push_version, send, removed, entries)
    if len(_DELTAS) >= DELTAS_MAX:
        _DELTAS.clear()
    _DELTAS[key] = (st.pending, send, removed, shared)
    return send, removed, shared


def _held(entries: dict[str, Entry], pending: dict[str, str | None]) -> dict[str, str]:
    """What a synced client holds: the snapshot, but the pending names as they were."""
    held = {n: e.version for n, e in entries.items()}
    for n, old in pending.items():
        if old is None:
            held.pop(n, None)
        else:
            held[n] = old
    return held


def _changed(st: TypeState, entries: dict[str, Entry]) -> tuple[list[str], list[str]]:
    """The names to send and to remove among the pending ones (what a whole-snapshot
    comparison would find: nothing else changed since the last response)."""
    send, removed = [], []
    for n, old in st.pending.items():
        held = old if st.synced else st.known.get(n)
        e = entries.get(n)
        wanted = st.wildcard or n in st.names or (
            e is not None and any(a in st.names for a in e.aliases))
        if e is not None:
            if held != e.version and wanted:
                send.append(n)
        elif held is not None and (st.wildcard or n in st.names):
            removed.append(n)
        if not wanted and not st.synced and held is not None:
            # No longer subscribed (an alias that resolves to it no more): forgotten, as the
            # whole comparison forgets it (`_against_wanted`), so that a later wildcard
            # subscription does not send a removal the comparison would not.
            del st.known[n]
    return sorted(send), sorted(removed)


def _wanted(st: TypeState, entries: dict[str, Entry]) -> tuple[set[str], set[str]]:
    """Resource names this client should hold, and subscribed names that resolve to nothing."""
    wanted: set[str] = set(entries) if st.wildcard else set()
    absent: set[str] = set()
    aliases: dict[str, str] | None = None
    for name in st.names:
        if name in entries:
            wanted.add(name)
            continue
        if aliases is None:  # built only when someone subscribes by alias (on-demand lookups)
            aliases = {a: n for n, e in entries.items() for a in e.aliases}
        real = aliases.get(name)
        if real is None:
            absent.add(name)
        else:
            wanted.add(real)
            if name in st.force:
                st.force.add(real)
    return wanted, absent


def _response(type_url: str, push_version: int, send: list[str], removed: list[str],
              entries: dict[str, Entry], nonce: str = "") -> Response:
    return Response(type_url, str(push_version), send, removed,
                    b"".join(_resource(n, entries[n]) for n in send), nonce)


# The Resource messages written lately (bytes): a change is pushed to every stream, whose
# responses differ (the streams woke at different times) but mostly hold the same resources.
# Emptied when full (bounded memory).
_BUILT: dict[tuple[str, str, tuple[str, ...]], bytes] = {}
BUILT_MAX = 8192


def _resource(name: str, e: Entry) -> bytes:
    key = (name, e.version, e.aliases)  # the version is the body's hash
    msg = _BUILT.get(key)
    if msg is None:
        if len(_BUILT) >= BUILT_MAX:
            _BUILT.clear()
        msg = _BUILT[key] = resource(name, e.version, e.type_url, e.value, e.aliases)
    return msg
