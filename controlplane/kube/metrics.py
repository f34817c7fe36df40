"""Metrics of the object sources (controlplane/kube): what was skipped or held back."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge

from controlplane.kube.objects import KINDS

# Why a manifest file read was held back (the labels of MANIFEST_READS_HELD_BACK).
HELD_INVALID = "invalid"   # not YAML/JSON, or unreadable: kept until it parses again
HELD_REMOVES = "removes"   # valid, but served objects would be removed: acted on once stable

# The manifests source (`--config PATH`: controlplane/kube/manifests.py).
OBJECTS_INVALID = Counter(
    "meshnode_controlplane_objects_invalid",
    "Objects skipped because they fail their kind's schema (Kubernetes' OpenAPI, Istio's "
    "CRDs), counted when the file holding them is read; by kind", ["kind"], registry=REGISTRY)
MANIFEST_READS_HELD_BACK = Counter(
    "meshnode_controlplane_manifest_reads_held_back",
    "Manifest file reads not acted on at once: the file's objects stay served, re-read after "
    "a pause; by reason (invalid: not YAML/JSON or unreadable, kept until it parses again; "
    "removes: would take objects away, acted on once stable)", ["reason"], registry=REGISTRY)
MANIFEST_FILES_INVALID = Gauge(
    "meshnode_controlplane_manifest_files_invalid",
    "Manifest files that do not parse (or cannot be read) now; their last good objects stay "
    "served", registry=REGISTRY)
for _k in KINDS:
    OBJECTS_INVALID.labels(kind=_k.kind)
for _reason in (HELD_INVALID, HELD_REMOVES):
    MANIFEST_READS_HELD_BACK.labels(reason=_reason)
