"""A kernel's pod, made from a pod template, and what its status says is wrong (pure).

:func:`build_pod` fills a template with one kernel's name, labels, image, user, volumes,
resources and bootstrap settings; :func:`pod_problem` and :func:`timed_out` read a pod's
status the way an operator would and word why its kernel will not start. Nothing here
talks to the API server (the launcher does), so every rule is unit-tested without a
cluster (``tests/test_k8s_pod.py``).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from typing import Any

import yaml

from ..base import KernelStartError, LaunchRequest
from ..remote import _resource_request

MANAGED_BY = "app.kubernetes.io/managed-by"
KERNEL_ID_LABEL = "raygate.io/kernel-id"
KERNELSPEC_LABEL = "raygate.io/kernelspec"
USERNAME_LABEL = "raygate.io/username"
SELECTOR = f"{MANAGED_BY}=raygate,{KERNEL_ID_LABEL}"
GPU_RESOURCE = "nvidia.com/gpu"
BOOTSTRAP_COMMAND = ["python", "-m", "raygate.launchers.kernelside.bootstrap"]
DEFAULT_TEMPLATE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "k8s",
    "kernel-pod.yaml",
)
FATAL_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}
"""Waiting reasons of a container that will not start without someone changing something."""
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")


class TemplateError(ValueError):
    """A pod template that cannot make a kernel pod."""


def load_pod_template(path: str) -> dict[str, Any]:
    """The pod template at ``path``, checked: a YAML ``Pod`` with at least one container."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise TemplateError(f"pod template {path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"pod template {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"pod template {path}: not a Kubernetes object (a YAML mapping)")
    kind, version = data.get("kind"), data.get("apiVersion", "v1")
    if kind != "Pod" or version != "v1":
        raise TemplateError(
            f"pod template {path}: must be a v1 Pod, not {version}/{kind or '(no kind)'}"
        )
    spec = data.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(containers, list) or not containers:
        raise TemplateError(f"pod template {path}: spec.containers must list the kernel container")
    for i, container in enumerate(containers):
        if not isinstance(container, dict) or not container.get("name"):
            raise TemplateError(f"pod template {path}: spec.containers[{i}] has no name")
    if not isinstance(data.get("metadata") or {}, dict):
        raise TemplateError(f"pod template {path}: metadata must be a mapping")
    return data


def kernel_container(pod: dict[str, Any]) -> dict[str, Any]:
    """The container that runs the kernel: the one named ``kernel``, else the first."""
    containers = pod["spec"]["containers"]
    return next((c for c in containers if c.get("name") == "kernel"), containers[0])


def pod_name(kernel_id: str) -> str:
    return f"raygate-kernel-{kernel_id}"


def label_value(text: str) -> str:
    """``text`` as a valid label value (63 characters, alphanumerics and ``-_.`` inside)."""
    return _LABEL_VALUE.sub("-", text)[:63].strip("-_.")


def cpu_quantity(cpus: float) -> str:
    return f"{round(cpus * 1000)}m"


def _whole(amount: float, what: str) -> str:
    if amount != int(amount):
        raise KernelStartError(
            f"Kubernetes gives {what} only in whole units, not {amount:g}", status=400
        )
    return str(int(amount))


def kubernetes_meta(request: LaunchRequest) -> dict[str, Any]:
    """The kernelspec's ``metadata.raygate.kubernetes`` (image, pod_template, namespace)."""
    return request.spec.raygate.section("kubernetes")


def json_list(request: LaunchRequest, var: str) -> list[dict[str, Any]]:
    """A ``KERNEL_*`` variable holding a JSON list of named objects (volumes, mounts)."""
    text = request.env.get(var, "").strip()
    if not text:
        return []
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise KernelStartError(f"{var} is not valid JSON: {exc}", status=400) from None
    if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("name") for i in items):
        raise KernelStartError(f"{var} must be a JSON list of objects with a name", status=400)
    return items


def pod_resources(
    request: LaunchRequest,
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """``(requests, limits, nodeSelector)`` for the kernel's resource request."""
    res = _resource_request(request)
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.cpus:
        requests["cpu"] = cpu_quantity(res.cpus)
    if res.cpus_limit:
        limits["cpu"] = cpu_quantity(res.cpus_limit)
    if res.memory:
        requests["memory"] = str(res.memory)
    if res.memory_limit:
        limits["memory"] = str(res.memory_limit)
    if res.gpus:
        if res.gpus_limit is not None and res.gpus_limit != res.gpus:
            raise KernelStartError(
                "a pod's GPU limit is its request: KERNEL_GPUS_LIMIT must equal KERNEL_GPUS",
                status=400,
            )
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = _whole(res.gpus, "GPUs")
    for name, amount in res.custom.items():
        requests[name] = limits[name] = _whole(amount, name)
    selector = dict(res.node_labels)
    if res.accelerator_type:
        raise KernelStartError(
            "the kubernetes launcher does not know which node label names an accelerator "
            "type; ask for it with KERNEL_NODE_LABELS (e.g. nvidia.com/gpu.product=...)",
            status=400,
        )
    if res.strategy == "node":
        if res.soft:
            raise KernelStartError(
                "the kubernetes launcher cannot prefer a node softly; use node:<name>",
                status=400,
            )
        selector["kubernetes.io/hostname"] = str(res.node_id)
    return requests, limits, selector


def account_ids(request: LaunchRequest) -> tuple[int, int]:
    """``--kernel-isolation users``: the ``(uid, gid)`` the user's pod runs as, from the
    gateway's mapping of the user (the users file's ids, else the gateway host's account
    of that name), never from the request."""
    if request.account_ids is None:
        raise KernelStartError(
            f"the start names account {request.account!r} but no uid and gid for it, so its "
            "pod cannot run as it (--kernel-isolation users)"
        )
    uid, gid = request.account_ids
    if uid == 0:
        raise KernelStartError(
            f"account {request.account!r} is uid 0: kernels never run as root", status=403
        )
    return uid, gid


def users_security(request: LaunchRequest) -> dict[str, Any]:
    """The security context settings that make a pod run as its user's account."""
    uid, gid = account_ids(request)
    return {"runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": True}


def bootstrap_account(request: LaunchRequest) -> dict[str, Any]:
    """The account for the bootstrap's settings: by ids, not by name (the image has no
    such account; the pod already runs as it, so the supervisor switches nothing)."""
    uid, gid = account_ids(request)
    return {"name": request.account, "uid": uid, "gid": gid, "groups": [], "home": ""}


def refused_id(var: str, request: LaunchRequest) -> str:
    """Why a request's ``KERNEL_UID``/``KERNEL_GID`` is refused in users mode."""
    return (
        f"{var} is not accepted here: this gateway runs each kernel as its user's own "
        f"account (--kernel-isolation users), so the pod runs as the uid and gid of account "
        f"{request.account!r}, which come from the user's identity, never from the request"
    )


def build_pod(
    template: dict[str, Any],
    request: LaunchRequest,
    namespace: str,
    settings: dict[str, Any],
    default_image: str = "",
) -> dict[str, Any]:
    """The kernel's pod: the template with this kernel's name, labels, image, user,
    resources and bootstrap settings filled in (the launcher, at each launch).

    The image is ``KERNEL_IMAGE``, else the kernelspec's, else ``default_image``
    (``--k8s-kernel-image``), else the template's.
    """
    pod = json.loads(json.dumps(template))  # a deep copy that YAML oddities cannot share
    name = pod_name(request.kernel_id)
    meta = pod.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = namespace
    meta.pop("generateName", None)
    labels = meta.get("labels") or {}
    labels.update(
        {
            MANAGED_BY: "raygate",
            KERNEL_ID_LABEL: request.kernel_id,
            KERNELSPEC_LABEL: label_value(request.spec.name),
        }
    )
    if request.username:
        labels[USERNAME_LABEL] = label_value(request.username)
    meta["labels"] = labels
    spec = pod["spec"]
    container = kernel_container(pod)
    image = (
        request.env.get("KERNEL_IMAGE", "").strip()
        or kubernetes_meta(request).get("image")
        or default_image
        or container.get("image")
    )
    if not image:
        raise KernelStartError("no kernel image: set --k8s-kernel-image or KERNEL_IMAGE")
    container["image"] = image
    container.setdefault("command", list(BOOTSTRAP_COMMAND))
    if request.cwd:
        container["workingDir"] = request.cwd
    account = request.env.get("KERNEL_SERVICE_ACCOUNT_NAME", "").strip()
    if account:
        spec["serviceAccountName"] = account
    security = spec.get("securityContext") or {}
    if request.account is not None:
        identity = users_security(request)
        security.update(identity)
        own = container.get("securityContext")
        if own:  # a container's own settings win over the pod's: the user's win over both
            own.update(identity)
        settings = {**settings, "account": bootstrap_account(request)}
    for var, key in (("KERNEL_UID", "runAsUser"), ("KERNEL_GID", "runAsGroup")):
        text = request.env.get(var, "").strip()
        if not text:
            continue
        if request.account is not None:
            raise KernelStartError(refused_id(var, request), status=400)
        if not text.isdigit():
            raise KernelStartError(f"{var} must be a number, not {text!r}", status=400)
        if int(text) == 0:
            raise KernelStartError(f"{var}=0: kernels do not run as root", status=400)
        security[key] = int(text)
    if security:
        spec["securityContext"] = security
    volumes = json_list(request, "KERNEL_VOLUMES")  # allowed by .policy, checked before
    if volumes:
        spec["volumes"] = (spec.get("volumes") or []) + volumes
    mounts = json_list(request, "KERNEL_VOLUME_MOUNTS")
    if mounts:
        container["volumeMounts"] = (container.get("volumeMounts") or []) + mounts
    requests, limits, selector = pod_resources(request)
    resources = container.get("resources") or {}
    if requests:
        resources["requests"] = {**(resources.get("requests") or {}), **requests}
    if limits:
        resources["limits"] = {**(resources.get("limits") or {}), **limits}
    container["resources"] = resources
    if selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **selector}
    ours: list[dict[str, Any]] = [
        {"name": "RAYGATE_BOOTSTRAP_SETTINGS", "value": json.dumps(settings)},
        {
            "name": "RAYGATE_KERNEL_SECRET",
            "valueFrom": {"secretKeyRef": {"name": name, "key": "secret"}},
        },
        {
            "name": "RAYGATE_ADVERTISE_ADDRESS",
            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
        },
        {"name": "KERNEL_ID", "value": request.kernel_id},
    ]
    taken = {v["name"] for v in ours}
    container["env"] = [v for v in container.get("env") or [] if v.get("name") not in taken]
    container["env"] += ours
    return pod


# -- what a pod's status says ------------------------------------------------------------


def pod_problem(pod: dict[str, Any]) -> tuple[str, int, str] | None:
    """Why a pod will not run its kernel, as ``(kind, status, message)``, or None.

    ``kind`` is ``unschedulable``, ``container`` (cannot be pulled/created) or ``ended``.
    """
    st = pod.get("status") or {}
    for cond in st.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            message = cond.get("message") or ""
            never = "Preemption is not helpful" in message
            return "unschedulable", 400 if never else 503, f"Unschedulable: {message}"
    statuses = (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or [])
    for cs in statuses:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            return (
                "container",
                500,
                f"container {cs.get('name')}: {waiting['reason']}: {waiting.get('message', '')}",
            )
        ended = state.get("terminated")
        if ended:
            return (
                "ended",
                500,
                f"container {cs.get('name')} exited with code {ended.get('exitCode')} "
                f"({ended.get('reason', '')}) before the kernel reported",
            )
    if st.get("phase") in ("Failed", "Succeeded"):
        detail = ": ".join(x for x in (st.get("reason"), st.get("message")) if x)
        return "ended", 500, f"the pod is {st['phase']}" + (f" ({detail})" if detail else "")
    return None


def timed_out(
    pod: dict[str, Any], namespace: str, name: str, request: LaunchRequest
) -> KernelStartError:
    """The error for a kernel whose pod did not report within its launch timeout, from
    the pod's last status: still unschedulable (503), never scheduled (503), or running
    without the kernel reporting (504)."""
    waited = request.launch_timeout
    problem = pod_problem(pod)
    if problem and problem[0] == "unschedulable":
        return KernelStartError(
            f"gave up after waiting {waited:g}s for its pod {namespace}/{name} to be "
            f"scheduled (it asks for {_resource_request(request).describe()}): {problem[2]}",
            status=503,
        )
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        return KernelStartError(
            f"gave up after waiting {waited:g}s: its pod {namespace}/{name} was not scheduled",
            status=503,
        )
    waiting = [
        f"{cs.get('name')}: {(cs.get('state') or {}).get('waiting', {}).get('reason', '')}"
        for cs in (pod.get("status") or {}).get("containerStatuses") or []
        if (cs.get("state") or {}).get("waiting")
    ]
    detail = f" (waiting: {', '.join(waiting)})" if waiting else ""
    return KernelStartError(
        f"timed out after {waited:g}s: its pod {namespace}/{name} runs on node {node} "
        f"but the kernel did not report back{detail}",
        status=504,
    )


def age(obj: dict[str, Any], now: datetime | None = None) -> float:
    """Seconds since an object's ``creationTimestamp`` (0 when it has none)."""
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return 0.0
    try:
        when = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return ((now or datetime.now(UTC)) - when).total_seconds()
