"""Finding kernel pods again, and deleting the orphans.

One scan, at startup and then every ``--k8s-scan-interval`` seconds (through the
launcher's ``find_running``/``find_new``): list the labelled pods and Secrets of the kernel
namespaces, adopt the pods that no gateway here serves whose bootstraps answer, and delete
a labelled pod that has ended, whose bootstrap no longer answers, or that never got a
record and is older than the longest launch timeout; a kernel Secret whose pod is gone
is deleted likewise.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .pod import KERNEL_ID_LABEL, SELECTOR, age

if TYPE_CHECKING:
    from ..base import KernelHandle
    from .launcher import KubernetesLauncher

log = logging.getLogger("raygate.launchers.kubernetes")

UNREACHABLE_BACKOFF = 300.0
"""Seconds before scanning again after the API server could not be reached."""


async def list_labelled(launcher: KubernetesLauncher, kind: str) -> list[dict[str, Any]] | None:
    """The raygate-labelled ``pod``s or ``secret``s of every kernel namespace; None when
    the API server cannot be reached or refuses."""
    api = launcher.api
    assert api is not None
    namespaces = {launcher.namespace} | launcher.kernel_namespaces
    try:
        if "*" in namespaces:
            listing = getattr(api, f"list_{kind}_for_all_namespaces")
            result = await launcher.call(listing, label_selector=SELECTOR)
            return launcher.as_dict(result).get("items") or []
        items: list[dict[str, Any]] = []
        listing = getattr(api, f"list_namespaced_{kind}")
        for ns in sorted(namespaces):
            result = await launcher.call(listing, ns, label_selector=SELECTOR)
            items += launcher.as_dict(result).get("items") or []
        return items
    except Exception as exc:  # ApiException, urllib3's errors when unreachable, ...
        log.warning("kubernetes launcher: cannot list kernel %ss: %s", kind, exc)
        return None


async def scan(launcher: KubernetesLauncher, known: set[str], timeout: float) -> list[KernelHandle]:
    """Adopt the labelled pods no gateway here serves whose bootstraps answer; delete
    the orphans (ended, bootstrap gone, or never recorded and old)."""
    pods = await list_labelled(launcher, "pod")
    if pods is None:  # the API server is unreachable: do not hold up the monitor often
        launcher.next_scan = time.monotonic() + max(launcher.scan_interval, UNREACHABLE_BACKOFF)
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
            or launcher.serves(kernel_id)
            or meta.get("deletionTimestamp")
            or launcher.unreachable_until(kernel_id) > now
        ):
            continue
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            log.info("deleting orphaned kernel pod %s/%s (%s)", ns, name, phase)
            await launcher.delete_pod(ns, name)
            continue
        record = await launcher.read_record(ns, name)
        if record is None or record.get("kernel_id") != kernel_id:
            if age(pod) > launcher.orphan_grace:
                log.info("deleting kernel pod %s/%s: it never got a record", ns, name)
                await launcher.delete_pod(ns, name)
            continue
        candidates[kernel_id] = (ns, name)
        records.append(record)
    found = await launcher.probe_records(records, timeout)
    adopted = {k.kernel_id for k in found}
    for kernel_id, (ns, name) in candidates.items():
        if kernel_id not in adopted and launcher.unreachable_until(kernel_id) <= now:
            log.info("deleting orphaned kernel pod %s/%s: its bootstrap is gone", ns, name)
            await launcher.delete_pod(ns, name)
    for secret in await list_labelled(launcher, "secret") or []:
        meta = secret["metadata"]
        if (meta["namespace"], meta["name"]) not in pod_names and age(
            secret
        ) > launcher.orphan_grace:
            log.info(
                "deleting kernel secret %s/%s: its pod is gone", meta["namespace"], meta["name"]
            )
            await launcher.delete_pod(meta["namespace"], meta["name"])
    return found
