"""What a gateway keeps to serve a remote kernel again after a restart: the reattach
records (one 0600 JSON file per kernel in a 0700 directory)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

log = logging.getLogger("raygate.launchers.remote.state")

STATE_VERSION = 1


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "raygate")


class StateStore:
    """One JSON file per remote kernel in a private directory: what a gateway needs to
    serve the kernel again after a restart (host, control port, secret, connection info,
    the launch request). Directory 0700, files 0600, written atomically."""

    def __init__(self, root: str) -> None:
        self.root = os.path.join(root or default_state_dir(), "kernels")

    def _path(self, kind: str, kernel_id: str) -> str:
        return os.path.join(self.root, f"{kind}-{kernel_id}.json")

    def save(self, kind: str, kernel_id: str, record: dict[str, Any]) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")  # created 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": STATE_VERSION, "kind": kind, **record}, f)
            os.replace(tmp, self._path(kind, kernel_id))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def remove(self, kind: str, kernel_id: str) -> None:
        try:
            os.unlink(self._path(kind, kernel_id))
        except FileNotFoundError:
            pass

    def load(self, kind: str) -> list[dict[str, Any]]:
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        records = []
        for name in names:
            if not (name.startswith(kind + "-") and name.endswith(".json")):
                continue
            path = os.path.join(self.root, name)
            try:
                with open(path) as f:
                    record = json.load(f)
                if record.get("version") != STATE_VERSION or record.get("kind") != kind:
                    raise ValueError("unknown record version or kind")
                records.append(record)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable kernel record %s: %s", path, exc)
        return records
