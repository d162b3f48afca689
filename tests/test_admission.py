"""Admission (raygate.kernels.admission): a start request becomes a LaunchRequest and its
launcher, or the error the user sees. Real kernelspecs on disk; launchers that never
launch; no gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kernelspecs import ipykernel_argv, write_kernelspec
from raygate.config import GatewayConfig
from raygate.errors import APIError
from raygate.kernels.admission import Admission
from raygate.kernels.caps import Claim, LocalReservations, Reservations
from raygate.kernelspecs import KernelSpecs
from raygate.launchers import KernelHandle, Launcher, LaunchRequest
from raygate.resources import ResourceRequest
from raygate.users import Usage


class Idle(Launcher):
    """A launcher admission can pick; nothing is ever launched through it here."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        raise AssertionError("admission never launches")


@pytest.fixture
def specs(tmp_path: Path) -> KernelSpecs:
    root = str(tmp_path)
    write_kernelspec(root, "python3", ipykernel_argv())
    write_kernelspec(
        root,
        "py-gpu",
        ipykernel_argv(),
        metadata={"raygate": {"launcher": "local", "resources": {"gpus": 1, "memory": "1Gi"}}},
    )
    write_kernelspec(
        root, "elsewhere", ipykernel_argv(), metadata={"raygate": {"launcher": "yarn"}}
    )
    write_kernelspec(
        root, "team", ipykernel_argv(), metadata={"raygate": {"allow_users": "alice,bob"}}
    )
    write_kernelspec(
        root, "bad-resources", ipykernel_argv(), metadata={"raygate": {"resources": [1]}}
    )
    write_kernelspec(root, "bad-meta", ipykernel_argv(), metadata={"raygate": "ray"})
    return KernelSpecs(extra_dirs=[root])


def admission(
    specs: KernelSpecs,
    running: int = 0,
    reservations: Reservations | None = None,
    table: list[tuple[str | None, ResourceRequest]] | None = None,
    **settings: Any,
) -> Admission:
    config = GatewayConfig(default_launcher="ray", **settings)
    held = table if table is not None else []
    store = reservations or LocalReservations(
        config, lambda user: [r for who, r in held if who == user]
    )
    launchers: dict[str, Launcher] = {"ray": Idle("ray"), "local": Idle("local")}
    return Admission(config, specs, launchers, store, running=lambda: running)


async def refused(coro: Any) -> APIError:
    with pytest.raises(APIError) as info:
        await coro
    return info.value


# -- the launch request ---------------------------------------------------------------------


async def test_the_request_of_a_plain_start(specs: KernelSpecs) -> None:
    gate = admission(specs, kernel_encryption="curve")
    admitted = await gate.admit(None, {"KERNEL_WORKING_DIR": "/tmp", "OTHER": "x"}, "alice")
    request = admitted.request
    assert admitted.launcher.kind == "ray"  # the gateway's default launcher
    assert request.spec.name == "python3"  # the gateway's default kernelspec
    assert request.username == "alice"
    assert request.env == {"KERNEL_WORKING_DIR": "/tmp"}  # OTHER is not allowed through
    assert request.cwd == "/tmp"
    assert request.launch_timeout == 60.0
    assert request.encryption == "curve"
    assert not request.pooled
    assert gate.starting == 1


async def test_the_authenticated_user_overrides_kernel_username(specs: KernelSpecs) -> None:
    gate = admission(specs)
    admitted = await gate.admit("python3", {"KERNEL_USERNAME": "mallory"}, "alice")
    assert admitted.request.username == "alice"
    admitted = await gate.admit("python3", {"KERNEL_USERNAME": "bob"}, None)
    assert admitted.request.username == "bob"  # names the kernel's user, grants nothing


async def test_kernelspec_launcher_and_resources(specs: KernelSpecs) -> None:
    admitted = await admission(specs).admit("py-gpu", {"KERNEL_CPUS": "2"})
    assert admitted.launcher.kind == "local"
    assert admitted.request.resources == ResourceRequest(cpus=2.0, gpus=1.0, memory=2**30)


async def test_timeout_within_the_operators_maximum(specs: KernelSpecs) -> None:
    gate = admission(specs, max_kernel_launch_timeout=30.0)
    admitted = await gate.admit("python3", {"KERNEL_LAUNCH_TIMEOUT": "90"})
    assert admitted.request.launch_timeout == 30.0


# -- refusals, with today's statuses and messages ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "env", "status", "words"),
    [
        ("nosuch", {}, 404, "No such kernelspec: nosuch"),
        (3, {}, 400, "'name' must be a string"),
        ("python3", "x", 400, "'env' must be a JSON object of strings"),
        ("python3", {"KERNEL_X": 1}, 400, "Environment variable KERNEL_X must be a string"),
        ("python3", {"KERNEL_LAUNCH_TIMEOUT": "soon"}, 400, "KERNEL_LAUNCH_TIMEOUT must be"),
        ("python3", {"KERNEL_GPUS": "many"}, 400, "Kernel python3: bad resource request:"),
        ("elsewhere", {}, 500, "Kernelspec elsewhere asks for launcher 'yarn'"),
        (
            "bad-resources",
            {},
            400,
            "Kernel bad-resources: bad resource request: "
            "kernelspec metadata.raygate.resources must be an object",
        ),
        ("bad-meta", {}, 500, "Kernelspec bad-meta: bad metadata.raygate"),
    ],
)
async def test_refused(specs: KernelSpecs, name: Any, env: Any, status: int, words: str) -> None:
    gate = admission(specs)
    error = await refused(gate.admit(name, env))
    assert (error.status, words in error.message) == (status, True), error.message
    assert gate.starting == 0


async def test_allow_lists(specs: KernelSpecs) -> None:
    gate = admission(specs, deny_users=["mallory"])
    assert (await gate.admit("team", {}, "alice")).request.username == "alice"
    error = await refused(gate.admit("team", {}, "carol"))
    assert error.status == 403
    assert "User 'carol' may not start kernelspec 'team': the user is not in its allow list" in (
        error.message
    )
    error = await refused(gate.admit("python3", {}, "mallory"))
    assert "in this gateway's deny list" in error.message


async def test_per_kernel_caps(specs: KernelSpecs) -> None:
    gate = admission(specs, max_kernel_gpus=0.5)
    error = await refused(gate.admit("py-gpu", {}))
    assert error.status == 400
    assert "KERNEL_GPUS: a kernel may ask for at most 0.5 GPUs on this gateway, not 1" in (
        error.message
    )


async def test_max_kernels_counts_the_table_and_starts_in_flight(specs: KernelSpecs) -> None:
    gate = admission(specs, running=1, max_kernels=2)
    await gate.admit("python3", {})
    error = await refused(gate.admit("python3", {}))
    assert error.status == 403
    assert error.message == "Resource limit reached: this gateway runs at most 2 kernels"


# -- per-user caps: reserve, settle, release ---------------------------------------------------


async def test_reservations_are_released_when_a_start_ends(specs: KernelSpecs) -> None:
    gate = admission(specs, max_kernels_per_user=1)
    first = await gate.admit("python3", {}, "alice")
    assert gate.usage("alice") == Usage(kernels=1)
    error = await refused(gate.admit("python3", {}, "alice"))
    assert error.status == 403
    assert "Per-user kernel limit reached: user 'alice' holds 1 kernel" in error.message
    assert (await gate.admit("python3", {}, "bob")).request.username == "bob"  # others' own
    await gate.ended(first.request.kernel_id)  # the start failed
    assert gate.usage("alice") == Usage()
    await gate.admit("python3", {}, "alice")


async def test_a_started_kernel_is_counted_by_the_table(specs: KernelSpecs) -> None:
    table: list[tuple[str | None, ResourceRequest]] = []
    gate = admission(specs, table=table, max_gpus_per_user=1.5)
    first = await gate.admit("py-gpu", {}, "alice")
    table.append(("alice", first.request.resources))  # what the registry does
    await gate.started(first.request.kernel_id, "warm-kernel-id")
    assert gate.starting == 0
    assert gate.usage("alice") == Usage(kernels=1, gpus=1.0, memory=2**30)
    error = await refused(gate.admit("py-gpu", {}, "alice"))
    assert "Per-user GPU limit reached: user 'alice' holds 1 GPU and asks for 1 more" in (
        error.message
    )


async def test_concurrent_reservations_never_exceed_a_cap(specs: KernelSpecs) -> None:
    gate = admission(specs, max_kernels_per_user=3)
    results = await asyncio.gather(
        *(gate.admit("python3", {}, "alice") for _ in range(10)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert len(admitted) == 3
    assert all(isinstance(r, APIError) and r.status == 403 for r in results if r not in admitted)
    assert gate.usage("alice").kernels == 3


class SlowStore(LocalReservations):
    """A store that suspends on every reservation, like one shared by gateway replicas."""

    def __init__(self, config: GatewayConfig) -> None:
        super().__init__(config, lambda user: [])
        self.claims: list[Claim] = []

    async def reserve(self, claim: Claim) -> None:
        await asyncio.sleep(0.01)
        self.claims.append(claim)
        await super().reserve(claim)


async def test_max_kernels_holds_while_a_store_suspends(specs: KernelSpecs) -> None:
    store = SlowStore(GatewayConfig())
    gate = admission(specs, reservations=store, max_kernels=2)
    results = await asyncio.gather(
        *(gate.admit("python3", {}) for _ in range(5)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 2
    assert len(store.claims) == 2  # the others were refused before reserving
    assert gate.starting == 2


async def test_a_refused_reservation_holds_nothing(specs: KernelSpecs) -> None:
    class Refusing(LocalReservations):
        async def reserve(self, claim: Claim) -> None:
            raise APIError(403, "no")

    gate = admission(specs, reservations=Refusing(GatewayConfig(), lambda user: []))
    assert (await refused(gate.admit("python3", {}, "alice"))).message == "no"
    assert gate.starting == 0


# -- the warm pool's requests ------------------------------------------------------------------


def test_pool_request(specs: KernelSpecs) -> None:
    admitted = admission(specs).pool_request("py-gpu")
    assert admitted.launcher.kind == "local"
    request = admitted.request
    assert request.pooled and request.env == {} and request.username is None
    assert request.resources == ResourceRequest(gpus=1.0, memory=2**30)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("nosuch", "--prewarm: no kernelspec named 'nosuch' (kernelspecs: "),
        ("elsewhere", "--prewarm: Kernelspec elsewhere asks for launcher 'yarn'"),
        ("bad-resources", "--prewarm: Kernel bad-resources: bad resource request"),
    ],
)
def test_pool_request_refused(specs: KernelSpecs, name: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        admission(specs).pool_request(name)
    assert words in str(info.value)
