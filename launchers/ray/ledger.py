"""Per-user caps shared by the gateway replicas of one Ray namespace.

Each user's ledger (:mod:`raygate.kernels.ledger`) lives in the cluster's KV store, one
key per version, ``<namespace>/<user>/<version>`` in the KV namespace
:data:`KV_NAMESPACE`; a replica changes it by writing the next version with
put-if-absent, which the GCS does atomically, so two replicas can never both write
version ``n + 1``. Versions more than a few below the newest are deleted by the writer.

What the ledger's entries are judged against: a kernel exists while its named actor is
in the namespace; a replica is its driver's job, gone once the GCS marks the job dead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from urllib.parse import quote

from raygate.kernels.ledger import latest_version, obsolete_keys, version_key, write_won

from . import cluster

log = logging.getLogger("raygate.launchers.ray")

KV_NAMESPACE = "raygate-caps"


class RayLedgerStore:
    """A :class:`raygate.kernels.caps.LedgerStore` in Ray's KV store; made by
    :meth:`RayLauncher.ledger_store <.launcher.RayLauncher.ledger_store>`, used once the
    launcher is connected. ``live_names``: the named actors of the namespace."""

    def __init__(self, namespace: str, live_names: Callable[[], Collection[str]]) -> None:
        self.namespace = namespace
        self.live_names = live_names

    def _prefix(self, username: str) -> str:
        return f"{quote(self.namespace, safe='')}/{quote(username, safe='')}/"

    def read(self, username: str) -> tuple[int, bytes | None]:
        prefix = self._prefix(username)
        while True:
            version = latest_version(cluster.kv_keys(prefix, KV_NAMESPACE), prefix)
            if version == 0:
                return 0, None
            value = cluster.kv_get(version_key(prefix, version), KV_NAMESPACE)
            if value is not None:
                return version, value
            # Deleted between the listing and the read: newer versions exist; again.

    def write(self, username: str, version: int, value: bytes) -> bool:
        prefix = self._prefix(username)
        key = version_key(prefix, version + 1)
        if not cluster.kv_put_if_absent(key, value, KV_NAMESPACE):
            return False
        keys = cluster.kv_keys(prefix, KV_NAMESPACE)
        if not write_won(keys, prefix, version + 1):
            # The version read was long deleted and this one was written anew: undo it.
            cluster.kv_delete(key, KV_NAMESPACE)
            return False
        for old in obsolete_keys(keys, prefix):
            cluster.kv_delete(old, KV_NAMESPACE)
        return True

    def replica(self) -> str:
        import ray

        return ray.get_runtime_context().get_job_id()

    def live_kernels(self) -> Collection[str]:
        return self.live_names()

    def dead_replicas(self) -> Collection[str]:
        return cluster.dead_jobs()
