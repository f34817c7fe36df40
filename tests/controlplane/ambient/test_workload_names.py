"""A pod's workload name is its owner's, as istiod computes it, so the telemetry's
`source_workload` / `destination_workload` do not grow with pod churn.

Facts from istio/istio pkg/kube/util_test.go (TestCronJobMetadata, TestDeployMeta: the
pods built there, and the names `GetDeployMetaFromPod` gives them), pkg/kube/util.go
(`GetWorkloadMetaFromPod`: the `service.istio.io/workload-name` label wins; only a pod with a
`generateName` is looked at, and only its controller reference), and
pilot/pkg/serviceregistry/ambient/workloads_test.go (TestPodWorkloads "pod with owner": a
ReplicaSet without a template hash names the workload). Each pod goes through the whole
conversion (controlplane/ambient: Index -> pod_workload), which reads the owner from the pod
object as it is given: `metadata.generateName`, `metadata.ownerReferences[]` (`controller`,
`kind`, `name`) and the labels `pod-template-hash`, `rollouts-pod-template-hash`,
`deploymentconfig`, `service.istio.io/workload-name`.
"""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.ambient import Options
from tests.controlplane.ambient.kube import convert, pod

OPTS = Options(cluster_id="cluster0", domain_suffix="domain.suffix")


def owned(name: str, generate: str, kind: str, owner: str, *, controller: bool | None = True,
          labels: dict[str, str] | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "name": owner}
    if controller is not None:
        ref["controller"] = controller
    return pod(name, labels=labels, meta={"generateName": generate, "ownerReferences": [ref]})


def workload_name(p: dict[str, Any]) -> tuple[str, str]:
    """(workload_name, canonical_name) of the pod's workload."""
    name = p["metadata"]["name"]
    state = convert(p, options=OPTS)
    assert not state.errors
    w = state.workloads[f"cluster0//Pod/ns/{name}"]
    assert w.name == name  # the workload's own name stays the pod's
    return w.workload_name, w.canonical_name


@pytest.mark.parametrize("p,want", [
    # TestCronJobMetadata: a Job named <cronjob>-<8 to 10 digits> is a CronJob's.
    (owned("sec-1234567890-podx", "sec-1234567890-pod", "Job", "sec-1234567890"), "sec"),
    (owned("min-12345678-podx", "min-12345678-pod", "Job", "min-12345678"), "min"),
    (owned("job-123-podx", "job-123-pod", "Job", "job-123"), "job-123"),
    # TestDeployMeta: OpenShift DeploymentConfig pods, with and without its label.
    (owned("deploy-rc-podx", "deploy-rc-pod", "ReplicationController", "deploy-rc",
           labels={"deploymentconfig": "deploy"}), "deploy"),
    (owned("deploy2-rc-podx", "deploy2-rc-pod", "ReplicationController", "deploy2-rc",
           labels={"deploymentconfig": "deploy2"}), "deploy2"),
    (owned("dep-rc-podx", "dep-rc-pod", "ReplicationController", "dep-rc"), "dep-rc"),
    # TestDeployMeta "argo-rollout": the rollout's template hash is dropped.
    (owned("name-6dc78b855c-x1", "name-6dc78b855c-", "ReplicaSet", "name-6dc78b855c",
           labels={"rollouts-pod-template-hash": "6dc78b855c"}), "name"),
    # A Deployment's pod: its ReplicaSet's pod-template-hash suffix is dropped.
    (owned("web-7c9f8d5b6d-q2w4x", "web-7c9f8d5b6d-", "ReplicaSet", "web-7c9f8d5b6d",
           labels={"pod-template-hash": "7c9f8d5b6d"}), "web"),
    # TestPodWorkloads "pod with owner": no hash label, the ReplicaSet's own name.
    (owned("rs-xvnqd", "rs-", "ReplicaSet", "rs"), "rs"),
    # A hash label that is not the owner's suffix: the owner's name as it is.
    (owned("rs2-abc", "rs2-", "ReplicaSet", "rs2", labels={"pod-template-hash": "zzz"}),
     "rs2"),
    # StatefulSet and DaemonSet pods: the controller's name.
    (owned("db-0", "db-", "StatefulSet", "db"), "db"),
    (owned("agent-7xk2p", "agent-", "DaemonSet", "agent"), "agent"),
    # Only the controller reference counts.
    (owned("lonely-abc", "lonely-", "ReplicaSet", "lonely-rs", controller=None), "lonely-abc"),
    (owned("lonely-def", "lonely-", "ReplicaSet", "lonely-rs", controller=False),
     "lonely-def"),
    # A bare pod keeps its name; so does a pod with an owner but no generateName.
    (pod("bare"), "bare"),
    (pod("named-by-hand", meta={"ownerReferences": [
        {"kind": "ReplicaSet", "name": "rs", "controller": True}]}), "named-by-hand"),
    # GetWorkloadMetaFromPod: the workload-name label wins over the owner.
    (owned("web-7c9f8d5b6d-zz", "web-7c9f8d5b6d-", "ReplicaSet", "web-7c9f8d5b6d",
           labels={"pod-template-hash": "7c9f8d5b6d",
                   "service.istio.io/workload-name": "frontend"}), "frontend"),
], ids=["cronjob-seconds", "cronjob-minutes", "job", "deploymentconfig",
        "deploymentconfig2", "replicationcontroller", "argo-rollout", "deployment",
        "replicaset", "hash-not-suffix", "statefulset", "daemonset", "no-controller-flag",
        "controller-false", "bare-pod", "no-generate-name", "workload-name-label"])
def test_workload_name_is_the_owners(p: dict[str, Any], want: str) -> None:
    name, canonical = workload_name(p)
    assert name == want
    assert canonical == want  # no app label: the canonical service is the workload name


def test_pods_of_one_deployment_share_one_workload_name() -> None:
    """Churn: every pod of a Deployment (new ReplicaSets on each rollout) is one workload."""
    names = set()
    for rs_hash, suffix in (("7c9f8d5b6d", "a1b2c"), ("7c9f8d5b6d", "d3e4f"),
                            ("5f6d7c8b9a", "g5h6i")):
        names.add(workload_name(owned(f"web-{rs_hash}-{suffix}", f"web-{rs_hash}-",
                                      "ReplicaSet", f"web-{rs_hash}",
                                      labels={"pod-template-hash": rs_hash}))[0])
    assert names == {"web"}


def test_malformed_owner_references_fall_back_to_the_pod_name() -> None:
    for refs in ("not-a-list", [42, "x"], [{"controller": True}]):
        p = pod("odd-1", meta={"generateName": "odd-", "ownerReferences": refs})
        assert workload_name(p)[0] == "odd-1"
