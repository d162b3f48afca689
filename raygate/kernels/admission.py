"""Admission: who may start what, and with what.

A start request (kernelspec name, ``env``, the authenticated user) becomes a
:class:`~raygate.launchers.LaunchRequest` and the launcher to run it here, or an
:class:`~raygate.errors.APIError` with the status and message the user sees: the
kernelspec lookup, env validation, the kernel's user, its launch timeout, the launcher
choice, the allow and deny lists, ``--max-kernels``, the resource request within the
per-kernel caps, and the per-user caps (held in a :class:`~.caps.Reservations` store until
the start is settled). The registry admits start requests here, and the warm pool its
kernels (:meth:`Admission.pool_request`), so both start kernels under the same rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raygate.config import GatewayConfig
from raygate.env import parse_timeout, validate_env
from raygate.errors import APIError
from raygate.isolation import AccountSource, admit
from raygate.kernelspecs import KernelSpecs, NoSuchKernel
from raygate.launchers import KernelSpecInfo, Launcher, LaunchRequest
from raygate.launchers.base import InvalidKernelSpecMetadata
from raygate.resources import (
    InvalidResourceRequest,
    ResourceCaps,
    ResourceRequest,
    request_for,
    with_default_limits,
)
from raygate.users import Usage, caps_for, check_allowed, claim_username

from .caps import Claim, Reservations


@dataclass(frozen=True)
class Admitted:
    """A start admitted: the request to launch and the launcher that launches it."""

    request: LaunchRequest
    launcher: Launcher


class Admission:
    """The rules one gateway starts kernels under; see the module docstring.

    ``running`` counts the kernels the gateway serves (its kernel table), for
    ``--max-kernels``; starts admitted and not yet settled are counted here
    (:attr:`starting`).
    """

    def __init__(
        self,
        config: GatewayConfig,
        kernelspecs: KernelSpecs,
        launchers: dict[str, Launcher],
        reservations: Reservations,
        running: Callable[[], int],
    ) -> None:
        self.config = config
        self.kernelspecs = kernelspecs
        self.launchers = launchers
        self.reservations = reservations
        self.running = running
        self._starting: set[str] = set()
        self.accounts: AccountSource | None = None
        """Accounts the users file names per user (``--kernel-isolation users``)."""

    # -- the parts, each also used on its own ---------------------------------------------

    def spec(self, name: str) -> KernelSpecInfo:
        """The kernelspec ``name`` with its ``metadata.raygate`` parsed, or 404; a
        malformed resources object is a 400 (the user's request cannot be made), any other
        malformed metadata a 500 (the kernelspec is the operator's to fix)."""
        try:
            spec = self.kernelspecs.launch_info(name)
        except NoSuchKernel:
            raise APIError(404, f"No such kernelspec: {name}") from None
        try:
            spec.raygate  # noqa: B018 - parsed here, once, so that its errors are answered here
        except InvalidKernelSpecMetadata as exc:
            if exc.key == "resources":
                raise APIError(400, f"Kernel {name}: bad resource request: {exc}") from None
            raise APIError(500, f"Kernelspec {name}: bad metadata.raygate: {exc}") from None
        return spec

    def launcher_for(self, spec: KernelSpecInfo) -> Launcher:
        """The launcher that starts ``spec``'s kernels here, or 500 when this gateway does
        not run the kind the kernelspec names."""
        kind = spec.raygate.launcher or self.config.default_launcher
        launcher = self.launchers.get(kind)
        if launcher is None:
            raise APIError(
                500,
                f"Kernelspec {spec.name} asks for launcher {kind!r}, which this gateway does "
                f"not run (it has: {', '.join(sorted(self.launchers))})",
            )
        return launcher

    def caps(self) -> ResourceCaps:
        """The most one kernel may ask for (``--max-kernel-cpus`` and the like)."""
        config = self.config
        return ResourceCaps(
            cpus=config.max_kernel_cpus or None,
            memory=config.max_kernel_memory or None,
            gpus=config.max_kernel_gpus or None,
        )

    def resources(self, spec: KernelSpecInfo, env: dict[str, str]) -> ResourceRequest:
        """The kernel's resource request: the kernelspec's, as ``env`` adjusts it, within
        the per-kernel caps, with the operator's default limits where it sets none (the
        kernel's supervisor enforces them); 400 when malformed or over a cap."""
        try:
            request = request_for(spec.raygate.resources, env, self.caps())
        except InvalidResourceRequest as exc:
            raise APIError(400, f"Kernel {spec.name}: bad resource request: {exc}") from None
        config = self.config
        return with_default_limits(
            request, config.kernel_memory_limit_default, config.kernel_cpus_limit_default
        )

    # -- start requests --------------------------------------------------------------------

    @property
    def starting(self) -> int:
        """Starts admitted and not yet settled (:meth:`started` or :meth:`ended`)."""
        return len(self._starting)

    def usage(self, username: str | None) -> Usage:
        """What ``username``'s kernels, running and starting, hold."""
        return self.reservations.usage(username)

    async def admit(
        self, name: Any, env: Any, user: str | None = None, groups: frozenset[str] = frozenset()
    ) -> Admitted:
        """Admit a start request for kernelspec ``name`` (None: the default) with ``env``
        (the request's, unvalidated); ``user``: the authenticated user, who overrides the
        request's ``KERNEL_USERNAME``, in ``groups`` (their lists' ``group:`` entries and
        ``group_caps`` apply). Called by the registry's ``start``.

        The caller settles every admitted start with :meth:`started` or :meth:`ended`.
        """
        name = name or self.config.default_kernel_name
        if not isinstance(name, str):
            raise APIError(400, "'name' must be a string")
        spec = self.spec(name)
        kernel_env = validate_env(env, self.config.allowed_envs)
        username = claim_username(kernel_env, user)
        timeout = parse_timeout(
            kernel_env.get("KERNEL_LAUNCH_TIMEOUT"),
            self.config.kernel_launch_timeout,
            self.config.max_kernel_launch_timeout,
        )
        launcher = self.launcher_for(spec)
        # Groups are the authenticated user's: a KERNEL_USERNAME-named user has none.
        groups = groups if user else frozenset()
        check_allowed(self.config, username, name, spec.raygate, groups)
        identity = admit(self.config.kernel_isolation, user, self.accounts)
        # Counted before the first await, so concurrent starts cannot overshoot the limit.
        limit = self.config.max_kernels
        if limit and self.running() + self.starting >= limit:
            raise APIError(
                403, f"Resource limit reached: this gateway runs at most {limit} kernels"
            )
        resources = self.resources(spec, kernel_env)
        kernel_id = str(uuid.uuid4())
        self._starting.add(kernel_id)
        try:
            caps = caps_for(self.config, groups)
            await self.reservations.reserve(Claim(kernel_id, username, resources, caps))
        except BaseException:
            self._starting.discard(kernel_id)
            raise
        request = LaunchRequest(
            kernel_id=kernel_id,
            spec=spec,
            env=kernel_env,
            launch_timeout=timeout,
            username=username,
            cwd=kernel_env.get("KERNEL_WORKING_DIR") or None,
            resources=resources,
            encryption=self.config.kernel_encryption,
            account=identity.account if identity else None,
            account_ids=(identity.uid, identity.gid) if identity else None,
        )
        return Admitted(request, launcher)

    async def started(self, claim_id: str, kernel_id: str) -> None:
        """The start admitted as ``claim_id`` (its request's kernel id) runs as
        ``kernel_id`` (a warm kernel keeps its own) and is in the kernel table now; called
        by the registry right after it put it there."""
        self._starting.discard(claim_id)
        await self.reservations.started(claim_id, kernel_id)

    async def ended(self, kernel_id: str, username: str | None = None) -> None:
        """The admitted start failed, or the kernel it started (of ``username``) is gone
        (called by the registry on shutdown): release what it held."""
        self._starting.discard(kernel_id)
        await self.reservations.ended(kernel_id, username)

    # -- the warm pool -------------------------------------------------------------------

    def pool_request(self, name: str) -> Admitted:
        """A request for a warm kernel of kernelspec ``name``: the kernelspec's own
        resources, no env, no user, marked ``pooled``. Read afresh each time, like a start
        request's. Raises ValueError (for ``raygate serve`` or the pool's log) when the
        kernelspec is unknown or cannot be started here. Called by the warm pool."""
        try:
            spec = self.spec(name)
            launcher = self.launcher_for(spec)
            resources = self.resources(spec, {})
        except APIError as exc:
            if exc.status == 404:
                known = ", ".join(self.kernelspecs.names()) or "none"
                exc.message = f"no kernelspec named {name!r} (kernelspecs: {known})"
            raise ValueError(f"--prewarm: {exc.message}") from None
        request = LaunchRequest(
            kernel_id=str(uuid.uuid4()),
            spec=spec,
            env={},
            launch_timeout=self.config.kernel_launch_timeout,
            resources=resources,
            encryption=self.config.kernel_encryption,
            pooled=True,
        )
        return Admitted(request, launcher)
