"""The manifests source: `--config PATH`, a file or a directory of manifests as `kubectl
apply -f PATH` takes them, watched for edits. The no-cluster mode: the same objects the
API server would serve, from files.

What is read, as kubectl reads it:
- a directory's files ending .yaml, .yml or .json, in name order, not its subdirectories
  (kubectl without -R); names starting with "." (editors' temporaries) are skipped;
- multi-document YAML (`---`), or a stream of JSON objects; empty documents are skipped;
- `kind: List` and typed lists (`ServiceList`, ...) are expanded into their items;
- an object of a namespaced kind without a namespace is in `default`, written into its
  metadata; a cluster-scoped kind's namespace is dropped;
- kinds the control plane does not read (a Deployment next to its Service) are ignored and
  counted; a kind it reads in an API version it does not serve is an error;
- each object is checked against its schema (controlplane/kube/validate.py): one that fails
  is skipped with `Kind ns/name: field.path: reason`, the others are served;
- the same object (kind, namespace, name) twice: the last in name order wins, with a warning.

A file that does not parse (e.g. caught half-written) is held back: its previous objects
stay served, and it is logged and counted, until it parses again. A read that would take a
file's objects away (fewer objects, or the file gone) is acted on only once two reads
HOLD_SECONDS apart agree, as controlplane/watch.py does for the mesh file. Every reload ends
in `ObjectStore.replace` per kind, so only real changes reach the store's listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import structlog
import yaml

from controlplane.kube import metrics
from controlplane.kube.objects import BY_KIND, KINDS, Kind, Obj, ObjectStore, key_of, kind_of, ref
from controlplane.kube.validate import Problem, validate
from core.fswatch import HOLD_SECONDS, HOLD_TRIES, changes

log = structlog.get_logger("controlplane.kube.manifests")

EXTENSIONS = (".yaml", ".yml", ".json")  # kubectl's FileExtensions


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML as the API server's decoder (sigs.k8s.io/yaml) reads it: an unquoted timestamp
    stays a string (`creationTimestamp: 2024-01-01T00:00:00Z` is a string field)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# A bare `=` resolves to YAML 1.1's "value" tag, which SafeLoader cannot construct.
_Loader.add_constructor("tag:yaml.org,2002:value",
                        lambda loader, node: str(getattr(node, "value", "")))


class Found(NamedTuple):
    kind: Kind
    obj: Obj
    where: str  # `FILE:LINE` of its document


@dataclass
class FileRead:
    """One read of one manifest file."""

    path: Path
    data: bytes | None = None     # None: gone or unreadable
    error: str = ""               # `FILE:LINE: reason`: unreadable, or not YAML/JSON at all
    objects: list[Found] = field(default_factory=list)   # valid, in file order
    invalid: list[Problem] = field(default_factory=list)             # schema failures
    doc_errors: list[str] = field(default_factory=list)  # documents that are not objects
    ignored: Counter[str] = field(default_factory=Counter)  # kinds not read: count

    @property
    def gone(self) -> bool:
        return self.data is None and not self.error

    @property
    def parsed(self) -> bool:
        return self.data is not None and not self.error

    def keys(self) -> set[tuple[str, str, str]]:
        return {(f.kind.kind, *key_of(f.obj)) for f in self.objects}

    def same(self, other: FileRead | None) -> bool:
        return other is not None and self.data == other.data and self.error == other.error


@dataclass
class Manifests:
    """What a PATH holds: the objects per kind, and what is wrong with it."""

    objects: dict[Kind, list[Obj]]
    errors: list[str]             # parse errors (`FILE:LINE: reason`), invalid objects
    warnings: list[str]           # duplicates
    ignored: Counter[str]         # kinds not read (`apps/v1, Kind=Deployment`): count
    files: list[Path]

    def count(self) -> int:
        return sum(len(v) for v in self.objects.values())


# ---- reading ----------------------------------------------------------------------------


def is_manifest_name(name: str) -> bool:
    return not name.startswith(".") and name.endswith(EXTENSIONS)


def manifest_files(path: Path) -> list[Path]:
    """The files `kubectl apply -f PATH` reads (without -R). OSError if PATH is missing."""
    if not path.is_dir():
        path.stat()  # raise if missing
        return [path]
    return sorted((p for p in path.iterdir() if is_manifest_name(p.name) and p.is_file()),
                  key=lambda p: p.name)


def read_file(path: Path) -> FileRead:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return FileRead(path)
    except OSError as exc:
        return FileRead(path, error=f"{path}: {exc.strerror or exc}")
    return parse(path, data)


def parse(path: Path, data: bytes) -> FileRead:
    """The objects of one file's bytes (`path` names it in errors)."""
    out = FileRead(path, data)
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        out.error = f"{path}: not UTF-8 text (byte {exc.start})"
        return out
    try:
        docs = list(_json_documents(text) if text.lstrip().startswith("{")
                    else _yaml_documents(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        out.error = f"{where}: {exc.problem or exc.context or 'invalid YAML'}"
        return out
    except yaml.YAMLError as exc:
        out.error = f"{path}: {exc}"
        return out
    except json.JSONDecodeError as exc:
        out.error = f"{path}:{exc.lineno}: {exc.msg}"
        return out
    for line, doc in docs:
        _add(out, doc, f"{path}:{line}")
    return out


def _yaml_documents(text: str) -> Iterator[tuple[int, Any]]:
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _no_duplicate_keys(node)
            yield node.start_mark.line + 1, _json_keys(loader.construct_document(node))
    finally:
        loader.dispose()


def _no_duplicate_keys(root: yaml.Node) -> None:
    """Refuse a mapping that names a key twice, as kubectl's strict decoder does. YAML
    loaders keep the last one silently: two objects pasted without `---` between them would
    read as the second alone, and the first would vanish without a word."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f'mapping key "{key.value}" already defined at line '
                            f"{seen[key.value]}", key.start_mark)
                    seen[key.value] = key.start_mark.line + 1
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _json_keys(v: Any) -> Any:
    """Mapping keys as JSON has them (sigs.k8s.io/yaml's YAMLToJSON): `8080:` is "8080"."""
    if isinstance(v, dict):
        return {(k if isinstance(k, str) else json.dumps(k) if k is None or isinstance(k, bool)
                 else str(k)): _json_keys(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_keys(x) for x in v]
    return v


def _json_documents(text: str) -> Iterator[tuple[int, Any]]:
    """A stream of JSON values (kubectl's JSON decoder reads several in a row)."""
    decoder = json.JSONDecoder()
    at = 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return
        doc, end = decoder.raw_decode(text, at)
        yield text.count("\n", 0, at) + 1, doc
        at = end


def _add(out: FileRead, doc: Any, where: str) -> None:
    if doc is None:
        return  # an empty document
    if not isinstance(doc, dict):
        out.doc_errors.append(f"{where}: not an object: a {type(doc).__name__}, want a "
                              "mapping with apiVersion and kind")
        return
    kind_name, api = doc.get("kind"), doc.get("apiVersion")
    unset = [f for f, v in (("apiVersion", api), ("kind", kind_name)) if not v]
    if unset or not isinstance(kind_name, str) or not isinstance(api, str):
        out.doc_errors.append(f"{where}: {' and '.join(unset) or 'apiVersion and kind'} "
                              + ("not set" if unset else "must be strings"))
        return
    if kind_name.endswith("List") and isinstance(doc.get("items"), list):
        item_kind = kind_name.removesuffix("List")
        for item in doc["items"]:
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {"apiVersion": api, "kind": item_kind, **item}  # a typed list's items
            _add(out, item, where)
        return
    kind = kind_of(doc)
    if kind is None:
        known = BY_KIND.get(kind_name)
        if known is not None and api.rpartition("/")[0] == known.group:
            out.doc_errors.append(f'{where}: no matches for kind "{kind_name}" in version '
                                  f'"{api}"')
        else:
            out.ignored[f"{api}, Kind={kind_name}"] += 1
        return
    meta = doc.get("metadata")
    if meta is None:
        meta = doc["metadata"] = {}
    if isinstance(meta, dict):
        if kind.namespaced and not meta.get("namespace"):
            doc["metadata"] = {**meta, "namespace": "default"}  # as kubectl does
        elif not kind.namespaced and "namespace" in meta:
            doc["metadata"] = {k: v for k, v in meta.items() if k != "namespace"}
    problems = validate(kind, doc)
    if problems:
        out.invalid.extend(problems)
    else:
        out.objects.append(Found(kind, doc, where))


def merge(reads: Iterable[FileRead]) -> Manifests:
    """The objects of files read in order (the last of a duplicate wins); a file that did
    not parse adds its error only."""
    objs: dict[Kind, dict[tuple[str, str], Obj]] = {k: {} for k in KINDS}
    origin: dict[tuple[str, str, str], str] = {}
    errors: list[str] = []
    warnings: list[str] = []
    ignored: Counter[str] = Counter()
    files: list[Path] = []
    for r in reads:
        files.append(r.path)
        if r.error:
            errors.append(r.error)
            continue
        errors.extend(r.doc_errors)
        errors.extend(str(p) for p in r.invalid)
        ignored.update(r.ignored)
        for kind, obj, where in r.objects:
            key = key_of(obj)
            first = origin.get((kind.kind, *key))
            if first is not None:
                warnings.append(f"{ref(kind, obj)}: duplicate: {first} and {where}; "
                                "the last one is used")
                objs[kind].pop(key)  # the winner takes the later place in the order
            origin[(kind.kind, *key)] = where
            objs[kind][key] = obj
    return Manifests({k: list(v.values()) for k, v in objs.items()}, errors, warnings,
                     ignored, files)


def load(path: Path) -> Manifests:
    """Everything PATH holds, read once (no store, no logs)."""
    try:
        files = manifest_files(path)
    except OSError as exc:
        return Manifests({k: [] for k in KINDS}, [f"{path}: {exc.strerror or exc}"], [],
                         Counter(), [])
    return merge(read_file(p) for p in files)


# ---- serving and watching --------------------------------------------------------------


class ManifestWatcher:
    """Fills an ObjectStore from PATH and keeps it in step with edits (`run`)."""

    def __init__(self, path: Path, store: ObjectStore) -> None:
        self.path = path
        self.store = store
        self._served: dict[Path, FileRead] = {}   # per file, what its objects come from
        self._reported: dict[Path, FileRead] = {}  # per file, the read last logged
        self._warned: set[str] = set()
        self._events = 0
        self.reloads = 0      # reloads that changed the store
        self.held_back = 0    # file reads held back (see metrics.MANIFEST_READS_HELD_BACK)
        store.subscribe(self._count)

    def _count(self, *_: object) -> None:
        self._events += 1

    def load(self) -> Manifests:
        """The first read: fills the store; the result has every problem found. OSError if
        PATH is missing (a start-up error, as a missing mesh file is)."""
        manifest_files(self.path)
        reads = self._read_all()
        self._apply(reads, hold=set())
        result = merge(reads[p] for p in sorted(reads, key=lambda p: p.name))
        log.info("manifests_loaded", path=str(self.path), files=len(reads),
                 objects={k.kind: len(v) for k, v in result.objects.items() if v},
                 ignored=dict(result.ignored), errors=len(result.errors))
        return result

    async def run(self) -> None:
        """Reload on every settled burst of changes under PATH, until cancelled."""
        is_dir = self.path.is_dir()
        directory = self.path if is_dir else self.path.parent

        def accept(name: str) -> bool:  # ..data: a ConfigMap volume's swap
            return name == "..data" or (is_manifest_name(name) if is_dir
                                        else name == self.path.name)

        async with contextlib.aclosing(changes(directory, accept)) as bursts:
            async for _ in bursts:
                await self.reload()

    async def reload(self) -> bool:
        """Re-read PATH; True if the store changed."""
        reads = self._read_all()
        hold: set[Path] = set()
        for attempt in range(1, HOLD_TRIES + 1):
            suspect = self._suspects(reads)
            if not suspect:
                break
            for p, reason in suspect.items():
                self.held_back += 1
                metrics.MANIFEST_READS_HELD_BACK.labels(reason=reason).inc()
                log.warning("manifest_read_held_back", file=str(p), reason=reason,
                            attempt=attempt, error=reads[p].error, recheck_s=HOLD_SECONDS)
            await asyncio.sleep(HOLD_SECONDS)
            again = self._read_all()
            stable = all(again[p].same(reads[p]) if p in again else reads[p].gone
                         for p in suspect)
            reads = again
            if stable:
                break
        else:
            hold = set(self._suspects(reads))  # still changing: the next close brings us back
        before = self._events
        self._apply(reads, hold)
        changed = self._events - before
        if changed:
            self.reloads += 1
            log.info("manifests_reloaded", path=str(self.path), changes=changed,
                     objects={k.kind: self.store.count(k) for k in KINDS if self.store.count(k)})
        return changed > 0

    def _read_all(self) -> dict[Path, FileRead]:
        """Every file now, and every served file that is gone; unchanged bytes reuse the
        served read."""
        try:
            files = manifest_files(self.path)
        except OSError as exc:
            log.error("manifests_unreadable", path=str(self.path), error=exc.strerror or str(exc))
            files = []
        reads: dict[Path, FileRead] = {}
        for p in files:
            served = self._served.get(p)
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                reads[p] = FileRead(p)
                continue
            except OSError as exc:
                reads[p] = FileRead(p, error=f"{p}: {exc.strerror or exc}")
                continue
            reads[p] = served if served is not None and served.data == data else parse(p, data)
        for p in self._served:
            reads.setdefault(p, FileRead(p))
        return reads

    def _suspects(self, reads: dict[Path, FileRead]) -> dict[Path, str]:
        """Files whose read may be a file caught mid-write, with the reason."""
        out: dict[Path, str] = {}
        for p, r in reads.items():
            served = self._served.get(p)
            if r.error:
                if not r.same(self._reported.get(p)):
                    out[p] = metrics.HELD_INVALID
            elif served is not None and r is not served and served.keys() - r.keys():
                out[p] = metrics.HELD_REMOVES
        return out

    def _apply(self, reads: dict[Path, FileRead], hold: set[Path]) -> None:
        served: dict[Path, FileRead] = {}
        for p, r in reads.items():
            old = self._served.get(p)
            if p in hold or r.error:
                if old is not None:
                    served[p] = old  # held back: the last good objects stay
                if r.error and not r.same(self._reported.get(p)):
                    self._reported[p] = r
                    log.error("manifest_file_invalid", file=str(p), error=r.error,
                              kept=len(old.objects) if old is not None else 0)
                continue
            if r.gone:
                self._reported.pop(p, None)
                if old is not None:
                    log.info("manifest_file_removed", file=str(p), objects=len(old.objects))
                continue
            served[p] = r
            if not r.same(self._reported.get(p)):
                self._reported[p] = r
                _report(r)
        self._served = served
        metrics.MANIFEST_FILES_INVALID.set(sum(1 for r in reads.values() if r.error))
        result = merge(served[p] for p in sorted(served, key=lambda p: p.name))
        for w in result.warnings:
            if w not in self._warned:
                log.warning("object_duplicate", warning=w)
        self._warned = set(result.warnings)
        for kind, objs in result.objects.items():
            self.store.replace(kind, objs)


def _report(r: FileRead) -> None:
    """Log (and count) what is wrong in a file read for the first time."""
    for e in r.doc_errors:
        log.error("manifest_document_invalid", error=e)
    for p in r.invalid:
        metrics.OBJECTS_INVALID.labels(kind=p.kind).inc()
        log.error("object_invalid", kind=p.kind, namespace=p.namespace, name=p.name,
                  field=p.field, reason=p.reason, file=str(r.path))
    if r.ignored:
        log.info("manifest_kinds_ignored", file=str(r.path), kinds=dict(r.ignored))
