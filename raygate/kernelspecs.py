"""Kernelspecs: found by jupyter_client, served in the Kernel Gateway's JSON shape."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_core.paths import jupyter_path

from raygate.launchers.base import KernelSpecInfo

RESOURCE_FILES = ("kernel.js", "kernel.css", "logo-32x32.png", "logo-64x64.png", "logo-svg.svg")

__all__ = ["KernelSpecs", "NoSuchKernel"]


def _kernel_dirs() -> list[str]:
    """jupyter_client's default search path, without its import of IPython (a fifth of a
    second of every gateway's start) just to find ``~/.ipython/kernels``."""
    ipython_dir = os.environ.get("IPYTHONDIR") or os.path.join(os.path.expanduser("~"), ".ipython")
    return [*jupyter_path("kernels"), os.path.join(ipython_dir, "kernels")]


class KernelSpecs:
    """The kernelspecs this gateway offers."""

    def __init__(self, default_name: str = "python3", extra_dirs: list[str] | None = None) -> None:
        self.manager = KernelSpecManager(kernel_dirs=[*(extra_dirs or []), *_kernel_dirs()])
        self.default_name = default_name

    def names(self) -> list[str]:
        return sorted(self.manager.find_kernel_specs())

    def get(self, name: str) -> KernelSpec:
        """Raises :class:`NoSuchKernel` for an unknown name."""
        return self.manager.get_kernel_spec(name)

    def launch_info(self, name: str) -> KernelSpecInfo:
        spec = self.get(name)
        return KernelSpecInfo(
            name=name,
            argv=list(spec.argv),
            env=dict(spec.env or {}),
            display_name=spec.display_name,
            language=spec.language,
            interrupt_mode=spec.interrupt_mode or "signal",
            metadata=dict(spec.metadata or {}),
        )

    def resource_path(self, name: str, filename: str) -> str | None:
        """The file of a kernelspec's resource directory, or None (no escaping it)."""
        spec = self.get(name)
        base = os.path.realpath(spec.resource_dir)
        path = os.path.realpath(os.path.join(base, filename))
        if not path.startswith(base + os.sep) or not os.path.isfile(path):
            return None
        return path

    def model(self, name: str, base_url: str = "/") -> dict[str, Any]:
        spec = self.get(name)
        resources = {}
        for filename in sorted(os.listdir(spec.resource_dir)):
            if filename in RESOURCE_FILES or filename.startswith("logo-"):
                key = os.path.splitext(filename)[0] if filename.startswith("logo-") else filename
                resources[key] = f"{base_url}kernelspecs/{quote(name)}/{quote(filename)}"
        return {"name": name, "spec": spec.to_dict(), "resources": resources}

    def all_models(self, base_url: str = "/") -> dict[str, Any]:
        specs = {}
        for name in self.names():
            try:
                specs[name] = self.model(name, base_url)
            except (NoSuchKernel, OSError, ValueError):
                continue  # a broken kernelspec on disk must not break the listing
        default = self.default_name if self.default_name in specs else next(iter(specs), "")
        return {"default": default, "kernelspecs": specs}
