"""Kernels as Kubernetes pods.

Each kernel is one pod made from a pod template (``--k8s-pod-template``, default the
``k8s/kernel-pod.yaml`` shipped with raygate; a kernelspec may name its own in
``metadata.raygate.kubernetes.pod_template``). The pod's kernel container (the one named
``kernel``, else the first) runs ``python -m raygate.launchers.kernelside.bootstrap``, which starts
the kernel in the pod and reports to the gateway's report listener; from then on the
gateway talks to the bootstrap's control endpoint at the pod's IP, as with SSH and Dask.

What raygate puts into the template, per kernel:

* name ``raygate-kernel-<kernel id>``, namespace ``KERNEL_NAMESPACE`` (when
  ``--k8s-kernel-namespaces`` allows it) or ``--k8s-namespace`` (default: the kubeconfig
  context's, or the gateway pod's own namespace);
* labels ``app.kubernetes.io/managed-by=raygate``, ``raygate.io/kernel-id``,
  ``raygate.io/kernelspec`` (and ``raygate.io/username``);
* image: ``KERNEL_IMAGE``, else the kernelspec's ``metadata.raygate.kubernetes.image``,
  else ``--k8s-kernel-image``, else the template's;
* ``KERNEL_SERVICE_ACCOUNT_NAME`` → ``serviceAccountName``; ``KERNEL_UID``/``KERNEL_GID`` →
  ``securityContext.runAsUser``/``runAsGroup`` (root is refused); ``KERNEL_WORKING_DIR`` →
  ``workingDir``; ``KERNEL_VOLUMES``/``KERNEL_VOLUME_MOUNTS`` (JSON lists, no ``hostPath``)
  are added to the template's volumes and the kernel container's mounts;
* the resource request: CPUs and memory → ``resources.requests`` (their ``_LIMIT``s →
  ``resources.limits``), GPUs → ``nvidia.com/gpu`` (whole GPUs, request = limit), custom
  resources → extended resources of that name, node labels → ``nodeSelector``,
  ``node:<name>`` → ``kubernetes.io/hostname``;
* the bootstrap's settings in ``RAYGATE_BOOTSTRAP_SETTINGS``, the pod IP (downward API) in
  ``RAYGATE_ADVERTISE_ADDRESS`` and the kernel's secret from a per-kernel Secret (same
  name as the pod, owned by it) through ``secretKeyRef``: never in the pod spec itself.

Starting fails promptly, with Kubernetes' own words, when the scheduler marks the pod
``Unschedulable`` (400 when preemption cannot help, i.e. no node could ever hold it; else
503; ``--k8s-unschedulable-wait`` gives an autoscaler that long first) or the kubelet
cannot pull or create the container (``ErrImagePull``, ``ImagePullBackOff``,
``InvalidImageName``, ``CreateContainerConfigError``, ...: 500).

Kernels are found again from the cluster alone: the kernel's Secret also holds its
reattach record (connection info, control port), so a restarted gateway, or another
replica, lists the labelled pods and serves them; no local state is needed.

Orphans are cleaned up at startup and then every ``--k8s-scan-interval`` seconds (the
same scan that adopts other replicas' kernels): a labelled pod that no gateway serves is
deleted when it has ended (``Succeeded``/``Failed``), when its bootstrap no longer answers,
or when it never got a record and is older than the longest launch timeout; a kernel
Secret whose pod is gone is deleted likewise.

The gateway needs, in each kernel namespace: pods (create, get, list, delete), pods/log
(get) and secrets (create, get, list, patch, delete).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from kubernetes import client as k8s_client
    from kubernetes.client.rest import ApiException

from .base import KernelHandle, KernelStartError, LaunchRequest
from .remote import RemoteKernel, RemoteLauncher, ReportListener, _resource_request
from .wire import encode_secret, new_secret

log = logging.getLogger("raygate.launchers.kubernetes")

T = TypeVar("T")

MANAGED_BY = "app.kubernetes.io/managed-by"
KERNEL_ID_LABEL = "raygate.io/kernel-id"
KERNELSPEC_LABEL = "raygate.io/kernelspec"
USERNAME_LABEL = "raygate.io/username"
SELECTOR = f"{MANAGED_BY}=raygate,{KERNEL_ID_LABEL}"
GPU_RESOURCE = "nvidia.com/gpu"
BOOTSTRAP_COMMAND = ["python", "-m", "raygate.launchers.kernelside.bootstrap"]
SERVICEACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_TEMPLATE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "k8s", "kernel-pod.yaml"
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
POLL = 0.5
UNREACHABLE_BACKOFF = 300.0
"""Seconds before scanning again after the API server could not be reached."""
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


def _api_exception() -> type[Exception]:
    """The Kubernetes client's API error. The client is imported on first use: importing
    it takes seconds, which every ``raygate serve`` would pay with no kernel on Kubernetes."""
    from kubernetes.client.rest import ApiException

    return ApiException


def _config_exception() -> type[Exception]:
    from kubernetes.config import ConfigException

    return ConfigException


def api_message(exc: ApiException) -> str:
    """The message of a Kubernetes ``Status`` error, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
        return str(body.get("message") or exc.reason)
    except (ValueError, TypeError, AttributeError):
        return f"{exc.status} {exc.reason}"


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


def _age(obj: dict[str, Any]) -> float:
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return 0.0
    try:
        when = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - when).total_seconds()


def _json_list(request: LaunchRequest, var: str) -> list[dict[str, Any]]:
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


class PodKernel(RemoteKernel):
    """A kernel in a pod: shutting it down also deletes the pod and its Secret."""

    async def shutdown(self) -> None:
        await super().shutdown()
        launcher = self.launcher
        assert isinstance(launcher, KubernetesLauncher)
        await launcher.delete_pod(self.extra["namespace"], self.extra["pod"])


class KubernetesLauncher(RemoteLauncher):
    """Kernels as pods, one per kernel, made from a pod template."""

    kind = "kubernetes"
    kernel_class = PodKernel

    def __init__(
        self,
        namespace: str = "",
        pod_template: str = "",
        kernel_image: str = "",
        kernel_namespaces: Collection[str] = (),
        kubeconfig: str = "",
        context: str = "",
        unschedulable_wait: float = 0.0,
        scan_interval: float = 30.0,
        orphan_grace: float = 660.0,
        request_timeout: float = 10.0,
        listener: ReportListener | None = None,
        state_dir: str = "",
        report_address: str = "",
    ) -> None:
        super().__init__(listener, state_dir, report_address)
        self.namespace = namespace
        self.template_path = pod_template or DEFAULT_TEMPLATE
        self.template: dict[str, Any] | None = None
        if pod_template or os.path.exists(DEFAULT_TEMPLATE):
            self.template = load_pod_template(self.template_path)  # bad: the gateway refuses
        self.kernel_image = kernel_image
        self.kernel_namespaces = {n for n in kernel_namespaces if n}
        self.kubeconfig = kubeconfig
        self.context = context
        self.unschedulable_wait = unschedulable_wait
        self.scan_interval = scan_interval
        self.orphan_grace = orphan_grace
        self.request_timeout = request_timeout
        self.api: k8s_client.CoreV1Api | None = None
        self._launching: set[str] = set()
        self._saves: dict[str, asyncio.Task] = {}
        self._next_scan = 0.0

    @classmethod
    def from_config(cls, config: Any) -> KubernetesLauncher:
        namespaces = getattr(config, "k8s_kernel_namespaces", "") or ""
        if isinstance(namespaces, str):
            namespaces = [n.strip() for n in namespaces.split(",")]
        return cls(
            namespace=getattr(config, "k8s_namespace", ""),
            pod_template=getattr(config, "k8s_pod_template", ""),
            kernel_image=getattr(config, "k8s_kernel_image", ""),
            kernel_namespaces=namespaces,
            kubeconfig=getattr(config, "k8s_kubeconfig", ""),
            context=getattr(config, "k8s_context", ""),
            unschedulable_wait=getattr(config, "k8s_unschedulable_wait", 0.0),
            scan_interval=getattr(config, "k8s_scan_interval", 30.0),
            orphan_grace=getattr(config, "max_kernel_launch_timeout", 600.0) + 60.0,
            **cls.remote_options(config),
        )

    # -- the API client --

    def _load_client(self) -> k8s_client.CoreV1Api | None:
        """A client for the configured cluster: ``--k8s-kubeconfig``, else the pod's service
        account when running in a cluster, else ``$KUBECONFIG``/``~/.kube/config``; None when
        there is none (the launcher then only refuses starts)."""
        default_file = os.path.expanduser(os.environ.get("KUBECONFIG") or "~/.kube/config")
        in_cluster = not self.kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST")
        if not (in_cluster or self.kubeconfig or os.path.exists(default_file.split(os.pathsep)[0])):
            return None
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        cfg = k8s_client.Configuration()
        namespace = ""
        if in_cluster:
            k8s_config.load_incluster_config(client_configuration=cfg)
            try:
                with open(SERVICEACCOUNT_NAMESPACE) as f:
                    namespace = f.read().strip()
            except OSError:
                pass
        else:
            path = self.kubeconfig or None
            k8s_config.load_kube_config(
                config_file=path, context=self.context or None, client_configuration=cfg
            )
            _, active = k8s_config.list_kube_config_contexts(config_file=path)
            if self.context:
                contexts, _ = k8s_config.list_kube_config_contexts(config_file=path)
                active = next((c for c in contexts if c["name"] == self.context), active)
            namespace = (active or {}).get("context", {}).get("namespace", "")
        self.namespace = self.namespace or namespace or "default"
        return k8s_client.CoreV1Api(k8s_client.ApiClient(cfg))

    async def start(self) -> None:
        try:
            self.api = await asyncio.to_thread(self._load_client)
        except (_config_exception(), OSError, ValueError) as exc:
            log.warning("kubernetes launcher: cannot load the cluster configuration: %s", exc)
            self.api = None
        if self.api is not None:
            log.info(
                "kubernetes launcher: kernels in namespace %s at %s",
                self.namespace,
                self.api.api_client.configuration.host,
            )

    async def close(self) -> None:
        if self._saves:
            await asyncio.gather(*self._saves.values(), return_exceptions=True)
        await super().close()

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(
            method, *args, _request_timeout=self.request_timeout, **kwargs
        )

    def _dict(self, obj: Any) -> dict[str, Any]:
        assert self.api is not None
        return self.api.api_client.sanitize_for_serialization(obj)

    # -- the pod --

    def _template_for(self, request: LaunchRequest) -> dict[str, Any]:
        meta = request.spec.metadata.get("raygate", {}).get("kubernetes") or {}
        path = meta.get("pod_template")
        if path:
            try:
                return load_pod_template(path)
            except TemplateError as exc:
                raise KernelStartError(f"kernelspec {request.spec.name}: {exc}") from None
        if self.template is None:
            raise KernelStartError(
                f"no pod template: {self.template_path} does not exist (set --k8s-pod-template)"
            )
        return self.template

    def _namespace_for(self, request: LaunchRequest) -> str:
        meta = request.spec.metadata.get("raygate", {}).get("kubernetes") or {}
        asked = request.env.get("KERNEL_NAMESPACE", "").strip()
        if (
            asked
            and asked != self.namespace
            and not (asked in self.kernel_namespaces or "*" in self.kernel_namespaces)
        ):
            raise KernelStartError(
                f"KERNEL_NAMESPACE={asked} is not allowed here (kernels run in {self.namespace}"
                + "".join(f", {n}" for n in sorted(self.kernel_namespaces))
                + "; see --k8s-kernel-namespaces)",
                status=400,
            )
        return asked or meta.get("namespace") or self.namespace

    def _resources(
        self, request: LaunchRequest
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

    def build_pod(
        self,
        template: dict[str, Any],
        request: LaunchRequest,
        namespace: str,
        settings: dict[str, Any],
    ) -> dict[str, Any]:
        """The kernel's pod: the template with this kernel's name, labels, image, user,
        resources and bootstrap settings filled in."""
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
        kmeta = request.spec.metadata.get("raygate", {}).get("kubernetes") or {}
        image = (
            request.env.get("KERNEL_IMAGE", "").strip()
            or kmeta.get("image")
            or self.kernel_image
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
        for var, key in (("KERNEL_UID", "runAsUser"), ("KERNEL_GID", "runAsGroup")):
            text = request.env.get(var, "").strip()
            if not text:
                continue
            if not text.isdigit():
                raise KernelStartError(f"{var} must be a number, not {text!r}", status=400)
            if int(text) == 0:
                raise KernelStartError(f"{var}=0: kernels do not run as root", status=400)
            security[key] = int(text)
        if security:
            spec["securityContext"] = security
        volumes = _json_list(request, "KERNEL_VOLUMES")
        if any("hostPath" in v for v in volumes):
            raise KernelStartError("KERNEL_VOLUMES may not mount hostPath volumes", status=400)
        if volumes:
            spec["volumes"] = (spec.get("volumes") or []) + volumes
        mounts = _json_list(request, "KERNEL_VOLUME_MOUNTS")
        if mounts:
            container["volumeMounts"] = (container.get("volumeMounts") or []) + mounts
        requests, limits, selector = self._resources(request)
        resources = container.get("resources") or {}
        if requests:
            resources["requests"] = {**(resources.get("requests") or {}), **requests}
        if limits:
            resources["limits"] = {**(resources.get("limits") or {}), **limits}
        container["resources"] = resources
        if selector:
            spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **selector}
        ours = [
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

    # -- launching --

    def _report_host(self) -> str:
        if self.report_address:
            return self.report_address
        if os.environ.get("POD_IP"):
            return os.environ["POD_IP"]
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return socket.gethostname()

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        if self.api is None:
            raise KernelStartError(
                "no Kubernetes cluster is configured (run in a cluster, or give --k8s-kubeconfig)"
            )
        await self.listen()
        started = time.monotonic()
        deadline = started + request.launch_timeout - min(2.0, 0.2 * request.launch_timeout)
        template = self._template_for(request)
        namespace = self._namespace_for(request)
        name = pod_name(request.kernel_id)
        secret = new_secret()
        placement = {"launcher": self.kind, "namespace": namespace, "pod": name}
        settings = self.bootstrap_settings(request, secret, self._report_host(), placement)
        settings.pop("secret")  # it comes from the kernel's Secret
        settings["report"]["timeout"] = max(5.0, request.launch_timeout)
        pod = self.build_pod(template, request, namespace, settings)
        labels = {k: v for k, v in pod["metadata"]["labels"].items() if k.startswith("raygate.io")}
        secret_obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "labels": {MANAGED_BY: "raygate", **labels}},
            "type": "Opaque",
            "data": {"secret": base64.b64encode(encode_secret(secret).encode()).decode()},
        }
        report = self.listener.expect(request.kernel_id, secret)
        self._launching.add(request.kernel_id)
        try:
            try:
                await self._call(self.api.create_namespaced_secret, namespace, secret_obj)
                created = self._dict(
                    await self._call(self.api.create_namespaced_pod, namespace, pod)
                )
            except _api_exception() as exc:
                status = 400 if exc.status in (400, 403, 404, 409, 422) else 503
                raise KernelStartError(
                    f"Kubernetes refused the kernel's pod in namespace {namespace}: "
                    f"{api_message(exc)}",
                    status=status,
                ) from None
            await self._own_secret(namespace, name, created["metadata"]["uid"])
            payload, node = await self._wait_for_report(report, namespace, name, request, deadline)
        except BaseException:
            self.listener.forget(request.kernel_id)
            await self.delete_pod(namespace, name, grace=0)
            raise
        finally:
            self._launching.discard(request.kernel_id)
        placement["node"] = node
        kernel = self.from_report(
            request, secret, payload, placement, {"namespace": namespace, "pod": name}
        )
        save = self._saves.get(kernel.kernel_id)
        if save is not None:
            await save
        log.info(
            "kernel %s: running in pod %s/%s on node %s in %.2fs",
            request.kernel_id,
            namespace,
            name,
            node,
            time.monotonic() - started,
        )
        return kernel

    async def _own_secret(self, namespace: str, name: str, uid: str) -> None:
        """Make the pod own its Secret, so Kubernetes deletes the Secret with the pod."""
        assert self.api is not None
        owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}
        try:
            await self._call(
                self.api.patch_namespaced_secret,
                name,
                namespace,
                {"metadata": {"ownerReferences": [owner]}},
            )
        except _api_exception() as exc:
            log.warning("secret %s/%s: could not set its owner: %s", namespace, name, exc)

    async def _wait_for_report(
        self,
        report: asyncio.Future,
        namespace: str,
        name: str,
        request: LaunchRequest,
        deadline: float,
    ) -> tuple[dict[str, Any], str]:
        """Wait for the bootstrap's report while watching the pod for reasons it will not
        come; returns the report and the pod's node."""
        assert self.api is not None
        unschedulable_since: float | None = None
        pod: dict[str, Any] = {}
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out(pod, namespace, name, request)
            done, _ = await asyncio.wait({report}, timeout=min(POLL, remaining))
            if report in done:
                node = (pod.get("spec") or {}).get("nodeName") or ""
                if not node:
                    try:
                        pod = self._dict(
                            await self._call(self.api.read_namespaced_pod, name, namespace)
                        )
                        node = pod["spec"].get("nodeName") or ""
                    except _api_exception():
                        pass
                return report.result(), node
            try:
                pod = self._dict(await self._call(self.api.read_namespaced_pod, name, namespace))
            except _api_exception() as exc:
                if exc.status == 404:
                    raise KernelStartError(
                        f"the kernel's pod {namespace}/{name} was deleted before it started"
                    ) from None
                log.warning("pod %s/%s: cannot read it: %s", namespace, name, exc)
                continue
            problem = pod_problem(pod)
            if problem is None:
                unschedulable_since = None
                continue
            kind, status, message = problem
            if kind == "unschedulable":
                unschedulable_since = unschedulable_since or time.monotonic()
                if time.monotonic() - unschedulable_since < self.unschedulable_wait:
                    continue
                raise KernelStartError(
                    f"its pod {namespace}/{name} cannot be scheduled "
                    f"(it asks for {_resource_request(request).describe()}): {message}",
                    status=status,
                )
            if kind == "ended":
                message += await self._log_tail(namespace, name)
            raise KernelStartError(f"its pod {namespace}/{name} failed: {message}", status=status)

    def _timed_out(
        self, pod: dict[str, Any], namespace: str, name: str, request: LaunchRequest
    ) -> KernelStartError:
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

    async def _log_tail(self, namespace: str, name: str) -> str:
        assert self.api is not None
        try:
            text = await self._call(
                self.api.read_namespaced_pod_log, name, namespace, tail_lines=20
            )
        except _api_exception():
            return ""
        return f"\n{text.strip()}" if text and text.strip() else ""

    async def delete_pod(self, namespace: str, name: str, grace: int | None = None) -> None:
        """Delete a kernel's pod and its Secret (either may already be gone)."""
        if self.api is None:
            return
        kwargs = {} if grace is None else {"grace_period_seconds": grace}
        for method, what in (
            (self.api.delete_namespaced_pod, "pod"),
            (self.api.delete_namespaced_secret, "secret"),
        ):
            try:
                await self._call(method, name, namespace, **kwargs)
            except _api_exception() as exc:
                if exc.status != 404:
                    log.warning("could not delete %s %s/%s: %s", what, namespace, name, exc)

    # -- records, kept in the kernel's Secret --

    def persist(self, kernel: RemoteKernel) -> None:
        """Write the kernel's reattach record into its Secret (in the background; launch
        waits for it)."""
        if self.api is None:
            return
        data = base64.b64encode(json.dumps(kernel.record()).encode()).decode()
        namespace, name = kernel.extra["namespace"], kernel.extra["pod"]

        async def save() -> None:
            assert self.api is not None
            try:
                await self._call(
                    self.api.patch_namespaced_secret,
                    name,
                    namespace,
                    {"data": {"record": data}},
                )
            except _api_exception() as exc:
                log.warning(
                    "kernel %s: could not save its record: %s", kernel.kernel_id, api_message(exc)
                )
            finally:
                self._saves.pop(kernel.kernel_id, None)

        self._saves[kernel.kernel_id] = asyncio.get_running_loop().create_task(save())

    def forget(self, kernel: RemoteKernel) -> None:
        self.kernels.pop(kernel.kernel_id, None)

    async def _read_record(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert self.api is not None
        try:
            secret = self._dict(await self._call(self.api.read_namespaced_secret, name, namespace))
        except _api_exception() as exc:
            if exc.status != 404:
                log.warning("cannot read secret %s/%s: %s", namespace, name, api_message(exc))
            return None
        data = (secret.get("data") or {}).get("record")
        if not data:
            return None
        try:
            return json.loads(base64.b64decode(data))
        except ValueError:
            return None

    # -- finding kernels and orphans --

    async def _list(self, method: str) -> list[dict[str, Any]] | None:
        assert self.api is not None
        namespaces = {self.namespace} | self.kernel_namespaces
        try:
            if "*" in namespaces:
                listing = getattr(self.api, f"list_{method}_for_all_namespaces")
                result = await self._call(listing, label_selector=SELECTOR)
                return self._dict(result).get("items") or []
            items = []
            listing = getattr(self.api, f"list_namespaced_{method}")
            for ns in sorted(namespaces):
                result = await self._call(listing, ns, label_selector=SELECTOR)
                items += self._dict(result).get("items") or []
            return items
        except Exception as exc:  # ApiException, urllib3's errors when unreachable, ...
            log.warning("kubernetes launcher: cannot list kernel %ss: %s", method, exc)
            return None

    async def find_running(self) -> list[KernelHandle]:
        if self.api is None:
            return []
        self._next_scan = time.monotonic() + self.scan_interval
        return await self._scan(set(), timeout=10.0)

    async def find_new(self, known: Collection[str]) -> list[KernelHandle]:
        if self.api is None or time.monotonic() < self._next_scan:
            return []
        self._next_scan = time.monotonic() + self.scan_interval
        return await self._scan(set(known), timeout=2.0)

    async def _scan(self, known: set[str], timeout: float) -> list[KernelHandle]:
        """Adopt the labelled pods no gateway here serves whose bootstraps answer; delete
        the orphans (ended, bootstrap gone, or never recorded and old)."""
        pods = await self._list("pod")
        if pods is None:  # the API server is unreachable: do not hold up the monitor often
            self._next_scan = time.monotonic() + max(self.scan_interval, UNREACHABLE_BACKOFF)
            return []
        now = time.monotonic()
        candidates: dict[str, tuple[str, str]] = {}
        records = []
        pod_names = set()
        for pod in pods:
            meta = pod["metadata"]
            ns, name = meta["namespace"], meta["name"]
            pod_names.add((ns, name))
            kernel_id = (meta.get("labels") or {}).get(KERNEL_ID_LABEL, "")
            if (
                kernel_id in known
                or kernel_id in self.kernels
                or kernel_id in self._launching
                or meta.get("deletionTimestamp")
                or self._unreachable.get(kernel_id, 0) > now
            ):
                continue
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                log.info("deleting orphaned kernel pod %s/%s (%s)", ns, name, phase)
                await self.delete_pod(ns, name)
                continue
            record = await self._read_record(ns, name)
            if record is None or record.get("kernel_id") != kernel_id:
                if _age(pod) > self.orphan_grace:
                    log.info("deleting kernel pod %s/%s: it never got a record", ns, name)
                    await self.delete_pod(ns, name)
                continue
            candidates[kernel_id] = (ns, name)
            records.append(record)
        found = await self._probe_records(records, timeout)
        adopted = {k.kernel_id for k in found}
        for kernel_id, (ns, name) in candidates.items():
            if kernel_id not in adopted and self._unreachable.get(kernel_id, 0) <= now:
                log.info("deleting orphaned kernel pod %s/%s: its bootstrap is gone", ns, name)
                await self.delete_pod(ns, name)
        secrets = await self._list("secret") or []
        for secret in secrets:
            meta = secret["metadata"]
            if (meta["namespace"], meta["name"]) not in pod_names and _age(
                secret
            ) > self.orphan_grace:
                log.info(
                    "deleting kernel secret %s/%s: its pod is gone", meta["namespace"], meta["name"]
                )
                await self.delete_pod(meta["namespace"], meta["name"])
        return found
