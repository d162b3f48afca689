"""Where kernels run: one module per environment behind :mod:`.base`."""

from __future__ import annotations

import importlib.util

from .base import (
    ConnectionInfo,
    KernelHandle,
    KernelSpecInfo,
    KernelStartError,
    Launcher,
    LaunchRequest,
)

__all__ = [
    "ConnectionInfo",
    "KernelHandle",
    "KernelSpecInfo",
    "KernelStartError",
    "LaunchRequest",
    "Launcher",
    "launcher_kinds",
]


def launcher_kinds() -> dict[str, type[Launcher]]:
    """The launcher classes by kind, imported lazily so optional dependencies stay optional."""
    from .local import LocalLauncher

    kinds: dict[str, type[Launcher]] = {LocalLauncher.kind: LocalLauncher}
    if importlib.util.find_spec("ray") is not None:  # ray installed: the ray launcher
        from .ray import RayLauncher

        kinds[RayLauncher.kind] = RayLauncher
    try:
        from .ssh import SSHLauncher

        kinds[SSHLauncher.kind] = SSHLauncher
    except ModuleNotFoundError as exc:  # asyncssh not installed: no ssh launcher
        if exc.name != "asyncssh":
            raise
    try:
        from .dask import DaskLauncher

        kinds[DaskLauncher.kind] = DaskLauncher
    except ModuleNotFoundError as exc:  # distributed not installed: no dask launcher
        if exc.name not in ("distributed", "raygate.launchers.dask"):
            raise
    # kubernetes installed: the kubernetes launcher (which imports the client when used)
    if all(importlib.util.find_spec(name) is not None for name in ("kubernetes", "yaml")):
        from .kubernetes import KubernetesLauncher

        kinds[KubernetesLauncher.kind] = KubernetesLauncher
    try:
        from .yarn import YarnLauncher

        kinds[YarnLauncher.kind] = YarnLauncher
    except ModuleNotFoundError as exc:  # httpx not installed: no yarn launcher
        if exc.name != "httpx":
            raise
    return kinds
