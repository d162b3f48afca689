"""What an isolated kernel inherits where it starts (``--kernel-isolation users``).

Used by whatever starts a kernel (the local launcher, the Ray kernel actor, the bootstrap)
to compose the host layer of its environment (:func:`.env.kernel_env`), and by the
launchers to tell a kernel whether it is granted its cluster's credentials. The gateway's
part of isolation (which account a start runs as) is :mod:`raygate.isolation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .account import Account

INHERITED = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR")
"""Variables of the gateway's (or the Ray worker's, or the bootstrap's) environment an
isolated kernel keeps; ``LC_*`` too. Everything else there may be a secret (the gateway's
token, the Ray cluster's, cloud credentials) and stays behind."""


CLUSTER_ENV_PREFIXES = ("RAY_", "DASK_")
"""What of the parent's environment a kernel granted cluster access keeps besides
:data:`INHERITED`: the Ray cluster's token settings, a Dask worker's TLS configuration."""


def kernel_host_env(
    parent: Mapping[str, str], account: Account | None, granted: bool
) -> dict[str, str] | None:
    """The host layer of an isolated kernel's environment (see
    :func:`raygate.launchers.kernelside.env.kernel_env`): the harmless part of ``parent``,
    and with cluster access its cluster's credentials too (a token kept in a file the
    kernel's account cannot read is handed over as ``RAY_AUTH_TOKEN``). None: the kernel
    is not isolated and inherits ``parent`` as it is. Called by the Ray kernel actor, the
    local launcher and the bootstrap."""
    if account is None:
        return None
    env = {k: v for k, v in parent.items() if k in INHERITED or k.startswith("LC_")}
    if account.home:
        env["HOME"] = account.home
    if granted:
        env.update({k: v for k, v in parent.items() if k.startswith(CLUSTER_ENV_PREFIXES)})
        path = parent.get("RAY_AUTH_TOKEN_PATH")
        if path and "RAY_AUTH_TOKEN" not in env:
            try:
                with open(path) as f:
                    env["RAY_AUTH_TOKEN"] = f.read().strip()
            except OSError:
                pass
        env.pop("RAY_AUTH_TOKEN_PATH", None)
    return env


def cluster_access(metadata: Mapping[str, Any] | None, isolation: str) -> bool:
    """Whether a kernel gets its cluster's credentials (Ray: ``RAY_ADDRESS`` and the token;
    Dask: ``DASK_SCHEDULER_ADDRESS`` and TLS settings). Without isolation, always, as
    before; with it only when the kernelspec's ``metadata.raygate`` says
    ``cluster_access: true`` (or ``ray_access: true``), which shares the cluster's trust
    with everyone who may start that kernelspec (docs/security.md)."""
    if isolation != "users":
        return True
    meta = metadata or {}
    return bool(meta.get("cluster_access") or meta.get("ray_access"))
