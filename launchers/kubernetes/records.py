"""The kernel's Secret: its bootstrap secret and, once it runs, its reattach record.

Each kernel pod has a Secret of the same name, owned by the pod (so Kubernetes deletes it
with the pod). It holds the kernel's secret, which the pod reads through ``secretKeyRef``
and which is never in the pod spec, and the reattach record (connection info, control
port) that lets a restarted gateway, or another replica, serve the kernel from the
cluster alone. These functions make and read those objects; the launcher sends them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..wire import encode_secret
from .pod import MANAGED_BY


def kernel_secret(name: str, labels: dict[str, str], secret: bytes) -> dict[str, Any]:
    """The Secret created before the pod: the kernel's secret, with the pod's labels."""
    ours = {k: v for k, v in labels.items() if k.startswith("raygate.io")}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {MANAGED_BY: "raygate", **ours}},
        "type": "Opaque",
        "data": {"secret": base64.b64encode(encode_secret(secret).encode()).decode()},
    }


def owner_patch(pod_name: str, pod_uid: str) -> dict[str, Any]:
    """The patch that makes the pod own its Secret."""
    owner = {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid}
    return {"metadata": {"ownerReferences": [owner]}}


def record_patch(record: dict[str, Any]) -> dict[str, Any]:
    """The patch that stores a kernel's reattach record in its Secret."""
    return {"data": {"record": base64.b64encode(json.dumps(record).encode()).decode()}}


def record_of(secret: dict[str, Any]) -> dict[str, Any] | None:
    """The reattach record in a kernel's Secret (as a dict), None when it has none."""
    data = (secret.get("data") or {}).get("record")
    if not data:
        return None
    try:
        return json.loads(base64.b64decode(data))
    except ValueError:
        return None
