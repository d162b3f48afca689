"""The Kubernetes launcher: one pod per kernel, watched until its bootstrap reports.

See the package's docstring for what it promises; pod building and the reading of pod
status are in :mod:`.pod`, the kernel's Secret in :mod:`.records`, finding kernels again
and deleting orphans in :mod:`.scan`, the lazily imported API client in :mod:`.client`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from raygate.settings import Items, Number, setting

from ..base import KernelHandle, KernelStartError, LaunchRequest
from ..remote import (
    RemoteKernel,
    RemoteLauncher,
    RemoteSettings,
    ReportListener,
    _resource_request,
)
from ..wire import new_secret
from . import records
from .client import (
    api_exception,
    api_message,
    config_exception,
    load_client,
    transport_error,
)
from .pod import (
    DEFAULT_TEMPLATE,
    TemplateError,
    build_pod,
    kubernetes_meta,
    load_pod_template,
    pod_name,
    pod_problem,
    timed_out,
)
from .policy import AllowLists
from .scan import scan

if TYPE_CHECKING:
    from kubernetes import client as k8s_client

    from raygate.config import GatewayConfig

log = logging.getLogger("raygate.launchers.kubernetes")

T = TypeVar("T")


class Unreachable(KernelStartError):
    """The API server gave no answer (refused, reset, timed out): raised by
    :meth:`KubernetesLauncher.call`, a 503 when a kernel start meets it."""


POLL = 0.5


class PodKernel(RemoteKernel):
    """A kernel in a pod: shutting it down also deletes the pod and its Secret."""

    async def shutdown(self) -> None:
        await super().shutdown()
        launcher = self.launcher
        assert isinstance(launcher, KubernetesLauncher)
        await launcher.delete_pod(self.extra["namespace"], self.extra["pod"])


@dataclass
class KubernetesSettings(RemoteSettings):
    k8s_namespace: str = setting(
        "",
        "Namespace the kubernetes launcher starts kernel pods in (default: the kubeconfig "
        "context's, or the gateway pod's own).",
    )
    k8s_pod_template: str = setting(
        "",
        "YAML Pod every kernel pod is made from (default: k8s/kernel-pod.yaml of raygate's "
        "source tree). Checked when the gateway starts.",
    )
    k8s_kernel_image: str = setting(
        "",
        "Image of kernel pods unless KERNEL_IMAGE or the kernelspec names one (default: "
        "the pod template's).",
    )
    k8s_kernel_namespaces: list[str] = setting(
        [],
        "Comma-separated namespaces a start request's KERNEL_NAMESPACE may name besides "
        "--k8s-namespace ('*': any).",
        Items(),
    )
    k8s_kubeconfig: str = setting(
        "",
        "kubeconfig file of the cluster (default: the pod's service account in a cluster, "
        "else $KUBECONFIG or ~/.kube/config).",
    )
    k8s_context: str = setting("", "kubeconfig context to use (default: its current).")
    k8s_unschedulable_wait: float = setting(
        0.0,
        "Seconds a kernel pod may stay Unschedulable (e.g. while a cluster autoscaler adds a "
        "node) before its start fails with the scheduler's reason (0: fail at once).",
        Number(min=0),
    )
    k8s_scan_interval: float = setting(
        30.0,
        "Seconds between scans for kernel pods started by other gateways and for orphaned "
        "pods to delete (also done at startup).",
        Number(min=0, min_open=True),
    )
    # What a start request may choose about its pod (policy.py parses and checks them).
    k8s_allowed_service_accounts: list[str] = setting(
        [],
        "Comma-separated service accounts (patterns: * ? [..] {username}) a start request's "
        "KERNEL_SERVICE_ACCOUNT_NAME may name (default: only the pod template's, else 'default').",
        Items(),
    )
    k8s_allowed_images: list[str] = setting(
        [],
        "Comma-separated image patterns (* ? [..] {username}) KERNEL_IMAGE may name (default: "
        "only the images configured: the pod template's, the kernelspec's, --k8s-kernel-image).",
        Items(),
    )
    k8s_allowed_volume_types: list[str] = setting(
        ["emptyDir"],
        "Comma-separated volume types KERNEL_VOLUMES may add (e.g. emptyDir,configMap; "
        "persistentVolumeClaim is allowed by claim name, see --k8s-allowed-claims).",
        Items(),
    )
    k8s_allowed_claims: list[str] = setting(
        [],
        "Comma-separated PersistentVolumeClaim names (patterns, e.g. claim-{username}: the "
        "kernel's user's own) KERNEL_VOLUMES may mount (default: none).",
        Items(),
    )
    k8s_allowed_uids: list[str] = setting(
        [],
        "Comma-separated uids and ranges (e.g. 1000-1999,65534) KERNEL_UID may choose (default: "
        "only the pod template's runAsUser; never 0).",
        Items(),
    )
    k8s_allowed_gids: list[str] = setting(
        [],
        "Comma-separated gids and ranges KERNEL_GID may choose (default: only the pod "
        "template's runAsGroup; never 0).",
        Items(),
    )


class KubernetesLauncher(RemoteLauncher):
    """Kernels as pods, one per kernel, made from a pod template."""

    kind = "kubernetes"
    kernel_class = PodKernel
    settings = KubernetesSettings
    requires = ("kubernetes",)  # the client is imported on first use (it is slow to import)

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
        allow: AllowLists | None = None,
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
        self.allow = allow or AllowLists()
        """What a start request's ``KERNEL_*`` values may choose about its pod."""
        self.api: k8s_client.CoreV1Api | None = None
        self._launching: set[str] = set()
        self._saves: dict[str, asyncio.Task] = {}
        self.next_scan = 0.0

    @classmethod
    def from_settings(
        cls, settings: KubernetesSettings, gateway: GatewayConfig
    ) -> KubernetesLauncher:
        return cls(
            namespace=settings.k8s_namespace,
            pod_template=settings.k8s_pod_template,
            kernel_image=settings.k8s_kernel_image,
            kernel_namespaces=settings.k8s_kernel_namespaces,
            kubeconfig=settings.k8s_kubeconfig,
            context=settings.k8s_context,
            unschedulable_wait=settings.k8s_unschedulable_wait,
            scan_interval=settings.k8s_scan_interval,
            orphan_grace=gateway.max_kernel_launch_timeout + 60.0,
            # malformed or never-matching lists: PolicyError, and the gateway does not start
            allow=AllowLists.parse(
                service_accounts=settings.k8s_allowed_service_accounts,
                images=settings.k8s_allowed_images,
                volume_types=settings.k8s_allowed_volume_types,
                claims=settings.k8s_allowed_claims,
                uids=settings.k8s_allowed_uids,
                gids=settings.k8s_allowed_gids,
            ),
            **cls.remote_options(settings, gateway),
        )

    # -- the API client --

    async def start(self) -> None:
        try:
            loaded = await asyncio.to_thread(load_client, self.kubeconfig, self.context)
        except (config_exception(), OSError, ValueError) as exc:
            log.warning("kubernetes launcher: cannot load the cluster configuration: %s", exc)
            loaded = None
        if loaded is None:
            self.api = None
            return
        self.api, namespace = loaded
        self.namespace = self.namespace or namespace or "default"
        log.info(
            "kubernetes launcher: kernels in namespace %s at %s",
            self.namespace,
            self.api.api_client.configuration.host,
        )

    async def close(self) -> None:
        if self._saves:
            await asyncio.gather(*self._saves.values(), return_exceptions=True)
        await super().close()

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API call, off the event loop, with the request timeout; an API server that
        does not answer raises :class:`Unreachable` (a 503 for a start)."""
        try:
            return await asyncio.to_thread(
                method, *args, _request_timeout=self.request_timeout, **kwargs
            )
        except transport_error() as exc:
            assert self.api is not None
            host = self.api.api_client.configuration.host
            raise Unreachable(
                f"cannot reach the Kubernetes API server at {host}: "
                f"{getattr(exc, 'reason', None) or exc}",
                status=503,
            ) from None

    def as_dict(self, obj: Any) -> dict[str, Any]:
        """An API object as the plain JSON-shaped dict Kubernetes sent."""
        assert self.api is not None
        return self.api.api_client.sanitize_for_serialization(obj)

    # -- the pod --

    def _template_for(self, request: LaunchRequest) -> dict[str, Any]:
        path = kubernetes_meta(request).get("pod_template")
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
        meta = kubernetes_meta(request)
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
        self.allow.check(request, template, self.kernel_image)  # before anything is created
        name = pod_name(request.kernel_id)
        secret = new_secret()
        placement = {"launcher": self.kind, "namespace": namespace, "pod": name}
        settings = self.bootstrap_settings(request, secret, self._report_host(), placement)
        settings.pop("secret")  # it comes from the kernel's Secret
        settings["report"]["timeout"] = max(5.0, request.launch_timeout)
        pod = build_pod(template, request, namespace, settings, self.kernel_image)
        secret_obj = records.kernel_secret(name, pod["metadata"]["labels"], secret)
        report = self.listener.expect(request.kernel_id, secret)
        self._launching.add(request.kernel_id)
        try:
            try:
                await self.call(self.api.create_namespaced_secret, namespace, secret_obj)
                created = self.as_dict(
                    await self.call(self.api.create_namespaced_pod, namespace, pod)
                )
            except api_exception() as exc:
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
        try:
            await self.call(
                self.api.patch_namespaced_secret, name, namespace, records.owner_patch(name, uid)
            )
        except api_exception() as exc:
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
                raise timed_out(pod, namespace, name, request)
            done, _ = await asyncio.wait({report}, timeout=min(POLL, remaining))
            if report in done:
                node = (pod.get("spec") or {}).get("nodeName") or ""
                if not node:
                    try:
                        pod = self.as_dict(
                            await self.call(self.api.read_namespaced_pod, name, namespace)
                        )
                        node = pod["spec"].get("nodeName") or ""
                    except api_exception():
                        pass
                return report.result(), node
            try:
                pod = self.as_dict(await self.call(self.api.read_namespaced_pod, name, namespace))
            except api_exception() as exc:
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

    async def _log_tail(self, namespace: str, name: str) -> str:
        assert self.api is not None
        try:
            text = await self.call(self.api.read_namespaced_pod_log, name, namespace, tail_lines=20)
        except api_exception():
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
                await self.call(method, name, namespace, **kwargs)
            except Unreachable as exc:
                # the orphan scan deletes it once the API server answers again
                log.warning("could not delete %s %s/%s: %s", what, namespace, name, exc)
            except api_exception() as exc:
                if exc.status != 404:
                    log.warning("could not delete %s %s/%s: %s", what, namespace, name, exc)

    # -- records, kept in the kernel's Secret --

    def persist(self, kernel: RemoteKernel) -> None:
        """Write the kernel's reattach record into its Secret (in the background; launch
        waits for it)."""
        if self.api is None:
            return
        patch = records.record_patch(kernel.record())
        namespace, name = kernel.extra["namespace"], kernel.extra["pod"]

        async def save() -> None:
            assert self.api is not None
            try:
                await self.call(self.api.patch_namespaced_secret, name, namespace, patch)
            except api_exception() as exc:
                log.warning(
                    "kernel %s: could not save its record: %s", kernel.kernel_id, api_message(exc)
                )
            except Unreachable as exc:
                log.warning("kernel %s: could not save its record: %s", kernel.kernel_id, exc)
            finally:
                self._saves.pop(kernel.kernel_id, None)

        self._saves[kernel.kernel_id] = asyncio.get_running_loop().create_task(save())

    def forget(self, kernel: RemoteKernel) -> None:
        self.kernels.pop(kernel.kernel_id, None)

    async def read_record(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The reattach record in a kernel's Secret (:mod:`.scan`)."""
        assert self.api is not None
        try:
            secret = self.as_dict(await self.call(self.api.read_namespaced_secret, name, namespace))
        except Unreachable as exc:
            log.warning("cannot read secret %s/%s: %s", namespace, name, exc)
            return None
        except api_exception() as exc:
            if exc.status != 404:
                log.warning("cannot read secret %s/%s: %s", namespace, name, api_message(exc))
            return None
        return records.record_of(secret)

    # -- finding kernels and orphans (:mod:`.scan`) --

    def serves(self, kernel_id: str) -> bool:
        """Whether this gateway serves or is launching the kernel."""
        return kernel_id in self.kernels or kernel_id in self._launching

    def unreachable_until(self, kernel_id: str) -> float:
        """Until when (monotonic) a kernel's bootstrap is left alone as unreachable."""
        return self._unreachable.get(kernel_id, 0.0)

    async def probe_records(
        self, found: list[dict[str, Any]], timeout: float
    ) -> list[KernelHandle]:
        """The kernels of these records whose bootstraps answer (adopted)."""
        return await self._probe_records(found, timeout)

    async def find_running(self) -> list[KernelHandle]:
        if self.api is None:
            return []
        self.next_scan = time.monotonic() + self.scan_interval
        return await scan(self, set(), timeout=10.0)

    async def find_new(self, known: Collection[str]) -> list[KernelHandle]:
        if self.api is None or time.monotonic() < self.next_scan:
            return []
        self.next_scan = time.monotonic() + self.scan_interval
        return await scan(self, set(known), timeout=2.0)
