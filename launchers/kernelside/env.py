"""The one composition of a kernel's environment.

Every place that starts a kernel (the local launcher, the Ray kernel actor, the remote
bootstrap) and every place that needs to know what a kernel was started with (the warm
pool) calls :func:`kernel_env`. Later layers win, in this order:

1. the **host** environment of the process that starts the kernel (the gateway, the Ray
   worker, the bootstrap), minus :data:`RUNTIME_ONLY_ENV`, variables that describe that
   process and would mislead the kernel (a Ray worker's job id, the bootstrap's secret);
2. the **place's defaults**: what the environment offers a kernel and a kernelspec or
   request may override (e.g. ``RAY_ADDRESS`` of the cluster the actor runs in);
3. the **kernelspec's** ``env``;
4. the **start request's** ``env`` (``KERNEL_*`` and allowed extras, already validated);
5. what **raygate** decides and nothing may override: ``KERNEL_ID``, ``KERNEL_USERNAME``
   (the kernel's user as the gateway established it, whatever the request claimed), what
   the place assigned (e.g. ``CUDA_VISIBLE_DEVICES``: exactly the GPUs Ray gave the
   kernel) and, for a kernel run as an account, its ``HOME``, ``USER`` and ``LOGNAME``.
"""

from __future__ import annotations

from collections.abc import Mapping

from .account import Account

RUNTIME_ONLY_ENV = frozenset(
    {
        # A Ray worker's own identity: the kernel's ray.init() is a driver of its own.
        "RAY_JOB_ID",
        "RAY_RAYLET_PID",
        "RAY_CLIENT_MODE",
        "RAY_LD_PRELOAD_ON_WORKERS",
        # The bootstrap's settings and secret (it pops them; a kernel must never see them).
        "RAYGATE_BOOTSTRAP_SETTINGS",
        "RAYGATE_KERNEL_SECRET",
    }
)
"""Variables of the process that starts a kernel that never reach the kernel."""


def kernel_env(
    kernel_id: str,
    *,
    host: Mapping[str, str],
    defaults: Mapping[str, str] | None = None,
    spec: Mapping[str, str] | None = None,
    request: Mapping[str, str] | None = None,
    username: str | None = None,
    assigned: Mapping[str, str] | None = None,
    account: Account | None = None,
) -> dict[str, str]:
    """The environment a kernel starts with; the layers and their order are in the module
    docstring. Called by :class:`~.supervisor.KernelSupervisor` for every spawn, and by the
    warm pool (``host={}``) to tell what a cold start would have added."""
    env = {k: v for k, v in host.items() if k not in RUNTIME_ONLY_ENV}
    for layer in (defaults, spec, request):
        env.update({str(k): str(v) for k, v in (layer or {}).items()})
    env["KERNEL_ID"] = kernel_id
    if username:
        env["KERNEL_USERNAME"] = username
    env.update(assigned or {})
    if account is not None:
        env.update(account.env())
    return env
