"""The Kubernetes launcher's pure parts, without a cluster: the pod built from a template
and a request, what a pod's status says is wrong, and the kernel's Secret."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from raygate.launchers.base import KernelSpecInfo, KernelStartError, LaunchRequest
from raygate.launchers.kubernetes import records
from raygate.launchers.kubernetes.pod import (
    TemplateError,
    build_pod,
    label_value,
    load_pod_template,
    pod_problem,
    timed_out,
)
from raygate.resources import ResourceRequest

TEMPLATE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"generateName": "x-", "labels": {"team": "a"}},
    "spec": {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "containers": [
            {"name": "sidecar", "image": "busybox"},
            {
                "name": "kernel",
                "image": "template/image:1",
                "env": [{"name": "KERNEL_ID", "value": "stale"}, {"name": "KEEP", "value": "1"}],
                "resources": {"requests": {"ephemeral-storage": "1Gi"}},
            },
        ],
    },
}
SETTINGS = {"report": {"host": "10.0.0.9", "port": 1}}


def request(
    env: dict[str, str] | None = None,
    kubernetes: dict[str, Any] | None = None,
    username: str | None = "alice",
    **resources: Any,
) -> LaunchRequest:
    metadata = {"raygate": {"launcher": "kubernetes", "kubernetes": kubernetes or {}}}
    spec = KernelSpecInfo(name="python3 (k8s)", argv=["python"], metadata=metadata)
    return LaunchRequest(
        kernel_id="0c6b3e5e-1f5e-4c8e-9f5e-3b0c1f2a3d4e",
        spec=spec,
        env=env or {},
        launch_timeout=30.0,
        username=username,
        resources=ResourceRequest(**resources),
    )


def build(req: LaunchRequest, default_image: str = "") -> dict[str, Any]:
    return build_pod(TEMPLATE, req, "kernels", SETTINGS, default_image)


def kernel_of(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "kernel")


def test_pod_names_labels_and_env() -> None:
    before = copy.deepcopy(TEMPLATE)
    pod = build(request())
    assert before == TEMPLATE  # the template is not changed
    meta = pod["metadata"]
    assert meta["name"] == "raygate-kernel-0c6b3e5e-1f5e-4c8e-9f5e-3b0c1f2a3d4e"
    assert meta["namespace"] == "kernels"
    assert "generateName" not in meta
    assert meta["labels"] == {
        "team": "a",
        "app.kubernetes.io/managed-by": "raygate",
        "raygate.io/kernel-id": "0c6b3e5e-1f5e-4c8e-9f5e-3b0c1f2a3d4e",
        "raygate.io/kernelspec": "python3-k8s",
        "raygate.io/username": "alice",
    }
    kernel = kernel_of(pod)
    assert kernel["command"] == ["python", "-m", "raygate.launchers.kernelside.bootstrap"]
    env = {v["name"]: v for v in kernel["env"]}
    assert env["KEEP"] == {"name": "KEEP", "value": "1"}
    assert env["KERNEL_ID"]["value"] == "0c6b3e5e-1f5e-4c8e-9f5e-3b0c1f2a3d4e"
    assert [v["name"] for v in kernel["env"]].count("KERNEL_ID") == 1
    assert json.loads(env["RAYGATE_BOOTSTRAP_SETTINGS"]["value"]) == SETTINGS
    assert env["RAYGATE_KERNEL_SECRET"]["valueFrom"] == {
        "secretKeyRef": {"name": meta["name"], "key": "secret"}
    }
    assert env["RAYGATE_ADVERTISE_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # the sidecar is left as it was
    assert pod["spec"]["containers"][0] == {"name": "sidecar", "image": "busybox"}


def test_image_precedence() -> None:
    assert kernel_of(build(request()))["image"] == "template/image:1"
    assert kernel_of(build(request(), "default/image"))["image"] == "default/image"
    spec_image = request(kubernetes={"image": "spec/image"})
    assert kernel_of(build(spec_image, "default/image"))["image"] == "spec/image"
    asked = request({"KERNEL_IMAGE": " asked/image "}, kubernetes={"image": "spec/image"})
    assert kernel_of(build(asked, "default/image"))["image"] == "asked/image"
    bare = copy.deepcopy(TEMPLATE)
    del bare["spec"]["containers"][1]["image"]
    with pytest.raises(KernelStartError, match="no kernel image"):
        build_pod(bare, request(), "kernels", SETTINGS)


def test_user_account_and_working_dir() -> None:
    req = request({"KERNEL_SERVICE_ACCOUNT_NAME": "kernels", "KERNEL_UID": "1001"})
    req.cwd = "/home/alice"
    pod = build(req)
    assert pod["spec"]["serviceAccountName"] == "kernels"
    assert pod["spec"]["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1001}
    assert kernel_of(pod)["workingDir"] == "/home/alice"
    pod = build(request({"KERNEL_GID": "100"}))
    assert pod["spec"]["securityContext"]["runAsGroup"] == 100
    assert "serviceAccountName" not in pod["spec"]


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"KERNEL_UID": "0"}, "KERNEL_UID=0: kernels do not run as root"),
        ({"KERNEL_GID": "0"}, "KERNEL_GID=0: kernels do not run as root"),
        ({"KERNEL_UID": "-5"}, "KERNEL_UID must be a number, not '-5'"),
        ({"KERNEL_VOLUMES": "[{"}, "KERNEL_VOLUMES is not valid JSON"),
        ({"KERNEL_VOLUMES": '{"name": "x"}'}, "must be a JSON list of objects with a name"),
        ({"KERNEL_VOLUME_MOUNTS": '[{"mountPath": "/x"}]'}, "must be a JSON list of objects"),
    ],
)
def test_bad_values_are_400(env: dict[str, str], words: str) -> None:
    with pytest.raises(KernelStartError) as caught:
        build(request(env))
    assert caught.value.status == 400
    assert words in str(caught.value)


def test_volumes_and_mounts_are_added() -> None:
    volumes = [{"name": "data", "emptyDir": {}}]
    mounts = [{"name": "data", "mountPath": "/data"}]
    pod = build(
        request({"KERNEL_VOLUMES": json.dumps(volumes), "KERNEL_VOLUME_MOUNTS": json.dumps(mounts)})
    )
    assert pod["spec"]["volumes"] == [{"name": "scratch", "emptyDir": {}}, *volumes]
    assert kernel_of(pod)["volumeMounts"] == mounts


def test_resources() -> None:
    pod = build(
        request(
            cpus=1.5,
            cpus_limit=2,
            memory=2**30,
            memory_limit=2**31,
            gpus=1,
            custom={"example.com/fpga": 2},
            node_labels={"pool": "gpu"},
        )
    )
    resources = kernel_of(pod)["resources"]
    assert resources == {
        "requests": {
            "ephemeral-storage": "1Gi",
            "cpu": "1500m",
            "memory": str(2**30),
            "nvidia.com/gpu": "1",
            "example.com/fpga": "2",
        },
        "limits": {
            "cpu": "2000m",
            "memory": str(2**31),
            "nvidia.com/gpu": "1",
            "example.com/fpga": "2",
        },
    }
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    pinned = build(request(strategy="node", node_id="worker-3"))
    assert pinned["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "worker-3"}
    assert "resources" not in build(request())["spec"]


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        ({"gpus": 0.5}, "Kubernetes gives GPUs only in whole units, not 0.5"),
        ({"gpus": 1, "gpus_limit": 2}, "KERNEL_GPUS_LIMIT must equal KERNEL_GPUS"),
        ({"custom": {"fpga": 1.5}}, "Kubernetes gives fpga only in whole units"),
        ({"accelerator_type": "A100"}, "ask for it with KERNEL_NODE_LABELS"),
        ({"strategy": "node", "node_id": "n", "soft": True}, "cannot prefer a node softly"),
    ],
)
def test_resources_kubernetes_cannot_give(resources: dict[str, Any], words: str) -> None:
    with pytest.raises(KernelStartError) as caught:
        build(request(**resources))
    assert caught.value.status == 400
    assert words in str(caught.value)


def test_label_value() -> None:
    assert label_value("alice@example.com") == "alice-example.com"
    assert label_value("-x-") == "x"
    assert len(label_value("a" * 100)) == 63


def test_template_errors(tmp_path: Path) -> None:
    def load(text: str) -> dict[str, Any]:
        path = tmp_path / "pod.yaml"
        path.write_text(text)
        return load_pod_template(str(path))

    assert load("kind: Pod\nspec:\n  containers: [{name: kernel}]\n")["kind"] == "Pod"
    for text, words in [
        ("kind: Pod\nspec: {containers: [}", "not valid YAML"),
        ("- a\n", "not a Kubernetes object"),
        ("kind: Deployment\n", "must be a v1 Pod, not v1/Deployment"),
        ("kind: Pod\nspec: {containers: []}\n", "spec.containers must list"),
        ("kind: Pod\nspec: {containers: [{image: x}]}\n", "spec.containers[0] has no name"),
    ]:
        with pytest.raises(TemplateError, match=words.replace("[", r"\[")):
            load(text)
    with pytest.raises(TemplateError, match="cannot read it"):
        load_pod_template(str(tmp_path / "missing.yaml"))


# -- pod status ------------------------------------------------------------------------


def unschedulable(message: str) -> dict[str, Any]:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
    }
    return {"status": {"phase": "Pending", "conditions": [condition]}}


def waiting(reason: str, message: str = "m") -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": message}}
    return {
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "kernel", "state": state}]},
    }


def test_pod_problems() -> None:
    assert pod_problem({}) is None
    assert pod_problem(waiting("ContainerCreating")) is None
    never = unschedulable("0/1 nodes are available: 1 Preemption is not helpful for scheduling.")
    assert pod_problem(never) == (
        "unschedulable",
        400,
        "Unschedulable: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
    )
    assert pod_problem(unschedulable("0/1 nodes: No preemption victims found"))[:2] == (
        "unschedulable",
        503,
    )
    assert pod_problem(waiting("ImagePullBackOff", "Back-off")) == (
        "container",
        500,
        "container kernel: ImagePullBackOff: Back-off",
    )
    assert pod_problem(waiting("CreateContainerConfigError"))[0] == "container"
    ended = {
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "kernel", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}
            ],
        }
    }
    assert pod_problem(ended) == (
        "ended",
        500,
        "container kernel exited with code 3 (Error) before the kernel reported",
    )
    evicted = {"status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}}
    assert pod_problem(evicted) == ("ended", 500, "the pod is Failed (Evicted: low on memory)")


def test_timed_out_says_where_it_stopped() -> None:
    req = request(cpus=2)
    error = timed_out(unschedulable("0/1 nodes"), "ns", "p", req)
    assert error.status == 503
    assert str(error) == (
        "gave up after waiting 30s for its pod ns/p to be scheduled (it asks for 2 CPUs): "
        "Unschedulable: 0/1 nodes"
    )
    error = timed_out({}, "ns", "p", req)
    assert (error.status, str(error)) == (
        503,
        "gave up after waiting 30s: its pod ns/p was not scheduled",
    )
    error = timed_out(waiting("ContainerCreating"), "ns", "p", req)
    assert error.status == 504
    assert str(error) == (
        "timed out after 30s: its pod ns/p runs on node n1 but the kernel did not report "
        "back (waiting: kernel: ContainerCreating)"
    )


# -- the kernel's Secret ---------------------------------------------------------------


def test_secret_and_record_round_trip() -> None:
    labels = {"raygate.io/kernel-id": "k", "team": "a", "app.kubernetes.io/managed-by": "x"}
    secret = records.kernel_secret("p", labels, b"\x00\x01key")
    assert secret["metadata"] == {
        "name": "p",
        "labels": {"app.kubernetes.io/managed-by": "raygate", "raygate.io/kernel-id": "k"},
    }
    assert base64.b64decode(base64.b64decode(secret["data"]["secret"])) == b"\x00\x01key"
    assert records.record_of(secret) is None
    record = {"kernel_id": "k", "connection": {"ip": "10.0.0.1", "shell_port": 5}}
    secret["data"].update(records.record_patch(record)["data"])
    assert records.record_of(secret) == record
    assert records.record_of({"data": {"record": "bm90IGpzb24="}}) is None
    assert records.owner_patch("p", "uid-1") == {
        "metadata": {
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "uid-1"}]
        }
    }


def isolated(ids: tuple[int, int] | None, env: dict[str, str] | None = None) -> LaunchRequest:
    req = request(env)
    req.account, req.account_ids = "alice", ids
    return req


def test_users_mode_pods_run_as_the_identitys_ids() -> None:
    template = copy.deepcopy(TEMPLATE)
    kernel_of(template)["securityContext"] = {"runAsUser": 1000, "readOnlyRootFilesystem": True}
    pod = build_pod(template, isolated((4321, 4322)), "kernels", SETTINGS)
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 4321,
        "runAsGroup": 4322,
    }
    # the kernel container's own settings would win over the pod's: they are the user's too
    assert kernel_of(pod)["securityContext"] == {
        "runAsUser": 4321,
        "runAsGroup": 4322,
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
    }
    env = {v["name"]: v.get("value") for v in kernel_of(pod)["env"]}
    account = json.loads(env["RAYGATE_BOOTSTRAP_SETTINGS"])["account"]
    assert account == {"name": "alice", "uid": 4321, "gid": 4322, "groups": [], "home": ""}
    assert "account" not in SETTINGS  # the caller's settings are not changed
    # isolation off: the template's user, as before
    assert build(request())["spec"]["securityContext"]["runAsUser"] == 1000


@pytest.mark.parametrize(
    "ids, env, status, words",
    [
        ((4321, 4322), {"KERNEL_UID": "4321"}, 400, "KERNEL_UID is not accepted here"),
        ((4321, 4322), {"KERNEL_GID": "5"}, 400, "never from the request"),
        ((0, 0), {}, 403, "uid 0: kernels never run as root"),
        (None, {}, 500, "no uid and gid for it"),
    ],
)
def test_users_mode_refuses_ids_from_the_request_root_and_no_ids(
    ids: tuple[int, int] | None, env: dict[str, str], status: int, words: str
) -> None:
    with pytest.raises(KernelStartError) as caught:
        build(isolated(ids, env))
    assert caught.value.status == status and words in str(caught.value), str(caught.value)


def test_account_ids_survive_the_launch_record() -> None:
    req = isolated((4321, 4322))
    back = LaunchRequest.from_record(json.loads(json.dumps(req.to_record())))
    assert back.account_ids == (4321, 4322) and back.account == "alice"
