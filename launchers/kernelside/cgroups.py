"""A cgroup per kernel, on cgroup v1 or v2, whichever holds each controller on this host.

Hosts differ: a pure v2 host has one ``cgroup2`` mount with every controller; an older or
"hybrid" host mounts v1 hierarchies (``/sys/fs/cgroup/memory``, ``/sys/fs/cgroup/cpu``, ...)
and a v2 mount that may hold none of the controllers we need. So each controller
(``memory``, ``cpu``) is looked up separately, from ``/proc/self/mountinfo`` and
``/proc/self/cgroup``, and the kernel's cgroup is made below the supervisor's own cgroup in
that controller's hierarchy (a child of ours: the kernel never escapes the limits that hold
the supervisor). On v2 a cgroup that holds processes cannot hand controllers to children,
so where ours cannot, the kernel's cgroup is made beside ours, below our parent.

=============  ===================================  ==========================================
limit          v2 file                              v1 file
=============  ===================================  ==========================================
memory         ``memory.max`` (``memory.swap.max``  ``memory.limit_in_bytes``
               0, ``memory.oom.group`` 1)           (``memory.memsw.limit_in_bytes`` the same)
CPUs           ``cpu.max``: ``quota period``        ``cpu.cfs_quota_us``, ``cpu.cfs_period_us``
=============  ===================================  ==========================================

The values are computed by pure functions (:func:`memory_files`, :func:`cpu_files`), unit
tested; :class:`KernelCgroup` writes them, reads the OOM-kill count and removes the cgroup.
Anything that stops a cgroup from being made raises :class:`CgroupError`; the caller then
falls back to the watchdog (:mod:`.limits`).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Protocol


class KernelLimits(Protocol):
    """What a cgroup is made for (:class:`.limits.KernelLimits`; a Protocol here so that
    this module, which limits.py imports, does not import it back)."""

    @property
    def memory(self) -> int | None: ...

    @property
    def cpus(self) -> float | None: ...


CPU_PERIOD_US = 100_000
"""The CFS period: the CPU quota is granted per 100 ms."""
MIN_CPU_QUOTA_US = 1_000
"""The kernel refuses quotas under 1 ms."""


class CgroupError(Exception):
    """No cgroup can be made for a kernel here (says why)."""


@dataclass(frozen=True)
class Hierarchy:
    """Where one controller lives: the directory of the supervisor's own cgroup in it."""

    version: int
    directory: str


@dataclass(frozen=True)
class Mount:
    point: str
    root: str
    fstype: str
    options: frozenset[str]


# -- finding the hierarchies (pure) -------------------------------------------------------


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup mounts of ``/proc/self/mountinfo``."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        mounts.append(Mount(point, fields[3], tail[0], frozenset(tail[2].split(","))))
    return mounts


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """``/proc/self/cgroup``: the v1 path per controller, and the v2 path (None: none)."""
    v1: dict[str, str] = {}
    v2 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        for name in controllers.split(","):
            if name:
                v1[name] = path
    return v1, v2


def _below(mount: Mount, path: str) -> str | None:
    """The directory of cgroup ``path`` under a mount whose root is ``mount.root``."""
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None  # our cgroup is outside what this mount shows (another namespace)
    rel = path[len(root) :].lstrip("/")
    return os.path.join(mount.point, rel) if rel else mount.point


def find_hierarchy(
    controller: str,
    mounts: list[Mount],
    v1_paths: dict[str, str],
    v2_path: str | None,
    v2_controllers: frozenset[str],
) -> Hierarchy | None:
    """Where ``controller`` can be used: v2 when the unified hierarchy has it (in the
    ``cgroup.controllers`` of our cgroup there, ``v2_controllers``), else v1."""
    if v2_path is not None and controller in v2_controllers:
        for mount in mounts:
            if mount.fstype == "cgroup2":
                directory = _below(mount, v2_path)
                if directory:
                    return Hierarchy(2, directory)
    path = v1_paths.get(controller)
    if path is not None:
        for mount in mounts:
            if mount.fstype == "cgroup" and controller in mount.options:
                directory = _below(mount, path)
                if directory:
                    return Hierarchy(1, directory)
    return None


# -- what to write (pure) ----------------------------------------------------------------


def cpu_quota(cpus: float, period: int = CPU_PERIOD_US) -> int:
    """Microseconds of CPU per period for ``cpus`` CPUs."""
    return max(MIN_CPU_QUOTA_US, round(cpus * period))


def memory_files(version: int, limit: int) -> list[tuple[str, str, bool]]:
    """(file, value, required) to write, in order, for a memory limit of ``limit`` bytes.
    Optional files are written where the host has them (no swap accounting: no memsw)."""
    if version == 2:
        return [
            ("memory.max", str(limit), True),
            ("memory.swap.max", "0", False),
            # An OOM kill takes the whole kernel (and what it started), not one of its parts.
            ("memory.oom.group", "1", False),
        ]
    # memsw (memory + swap) may not be set below limit_in_bytes: written after it.
    return [
        ("memory.limit_in_bytes", str(limit), True),
        ("memory.memsw.limit_in_bytes", str(limit), False),
    ]


def cpu_files(version: int, cpus: float) -> list[tuple[str, str, bool]]:
    quota = cpu_quota(cpus)
    if version == 2:
        return [("cpu.max", f"{quota} {CPU_PERIOD_US}", True)]
    return [
        ("cpu.cfs_period_us", str(CPU_PERIOD_US), True),
        ("cpu.cfs_quota_us", str(quota), True),
    ]


def oom_kills(text: str) -> int:
    """The OOM-kill count from ``memory.events`` (v2) or ``memory.oom_control`` (v1):
    both have an ``oom_kill N`` line."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def cgroup_name(kernel_id: str) -> str:
    return f"raygate-kernel-{kernel_id}"


# -- the host ---------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def host_hierarchies(controllers: list[str]) -> dict[str, Hierarchy]:
    """Where each of ``controllers`` lives for this process; :class:`CgroupError` for one
    this host does not offer."""
    mounts = parse_mountinfo(_read("/proc/self/mountinfo"))
    v1, v2 = parse_proc_cgroup(_read("/proc/self/cgroup"))
    v2_controllers: frozenset[str] = frozenset()
    if v2 is not None:
        for mount in mounts:
            if mount.fstype == "cgroup2":
                directory = _below(mount, v2)
                if directory:
                    text = _read(os.path.join(directory, "cgroup.controllers"))
                    v2_controllers = frozenset(text.split())
                    break
    out = {}
    for controller in controllers:
        hierarchy = find_hierarchy(controller, mounts, v1, v2, v2_controllers)
        if hierarchy is None:
            raise CgroupError(f"this host has no {controller} cgroup controller for us")
        out[controller] = hierarchy
    return out


@dataclass
class KernelCgroup:
    """The cgroup(s) of one kernel: one directory per hierarchy used (on v2 one for both
    controllers; on v1 one per controller). Made by :meth:`create`, removed by
    :meth:`remove`."""

    directories: dict[str, str] = field(default_factory=dict)
    """controller -> the kernel's cgroup directory in its hierarchy."""
    versions: dict[str, int] = field(default_factory=dict)
    """controller -> 1 or 2."""
    made: list[str] = field(default_factory=list)

    @property
    def version(self) -> int:
        """2 when any controller is on v2 (for messages: ``cgroup v2``)."""
        return max(self.versions.values(), default=1)

    @classmethod
    def create(cls, kernel_id: str, limits: KernelLimits) -> KernelCgroup:
        """Make the kernel's cgroup(s) and write its limits; :class:`CgroupError` (and
        nothing left behind) when that cannot be done here."""
        wanted = [c for c, v in (("memory", limits.memory), ("cpu", limits.cpus)) if v]
        hierarchies = host_hierarchies(wanted)
        return cls.create_in(kernel_id, limits, hierarchies)

    @classmethod
    def create_in(
        cls, kernel_id: str, limits: KernelLimits, hierarchies: dict[str, Hierarchy]
    ) -> KernelCgroup:
        """:meth:`create` with the hierarchies given (tests point them at a fake tree)."""
        cgroup = cls()
        directories = cgroup.directories
        v2 = [c for c, h in hierarchies.items() if h.version == 2]
        try:
            v2_base = _v2_base(hierarchies[v2[0]].directory, v2) if v2 else ""
            for controller, hierarchy in hierarchies.items():
                base = v2_base if hierarchy.version == 2 else hierarchy.directory
                directory = os.path.join(base, cgroup_name(kernel_id))
                if directory not in cgroup.made:
                    try:
                        os.mkdir(directory, 0o755)
                        cgroup.made.append(directory)
                    except FileExistsError:
                        pass  # a kernel of this id restarted by a new supervisor
                directories[controller] = directory
                cgroup.versions[controller] = hierarchy.version
                if controller == "memory":
                    assert limits.memory is not None
                    _apply(directory, memory_files(hierarchy.version, limits.memory))
                else:
                    assert limits.cpus is not None
                    _apply(directory, cpu_files(hierarchy.version, limits.cpus))
        except OSError as exc:
            cgroup.remove()
            raise CgroupError(f"cannot make the kernel's cgroup: {exc}") from None
        except CgroupError:
            cgroup.remove()
            raise
        return cgroup

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a new kernel process writes its pid to, once each."""
        return sorted({os.path.join(d, "cgroup.procs") for d in self.directories.values()})

    def oom_kills(self) -> int:
        directory = self.directories.get("memory")
        if directory is None:
            return 0
        version = self.versions.get("memory", 1)
        name = "memory.events" if version == 2 else "memory.oom_control"
        return oom_kills(_read(os.path.join(directory, name)))

    def pids(self) -> list[int]:
        out: set[int] = set()
        for path in self.procs_files():
            out.update(int(p) for p in _read(path).split() if p.isdigit())
        return sorted(out)

    def kill_all(self) -> None:
        """SIGKILL every process still in the kernel's cgroup."""
        for path in {os.path.dirname(p) for p in self.procs_files()}:
            kill = os.path.join(path, "cgroup.kill")
            if os.path.exists(kill):
                try:
                    _write(kill, "1")
                    continue
                except OSError:
                    pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def remove(self, timeout: float = 5.0) -> None:
        """Remove the cgroup directories this made (their processes killed first): a
        dying process keeps its cgroup busy for a moment, hence the retries."""
        if self.made:
            self.kill_all()
        deadline = time.monotonic() + timeout
        for directory in reversed(self.made):
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
        self.made = []


def _v2_base(ours: str, controllers: list[str]) -> str:
    """Where a kernel's v2 cgroup is made: below our cgroup when it has (or can be given)
    the controllers in its ``cgroup.subtree_control``; else beside it, below our parent,
    which gives them to us (a cgroup that holds processes cannot hand controllers down:
    the kernel says EBUSY). :class:`CgroupError` when neither works."""
    control = os.path.join(ours, "cgroup.subtree_control")
    missing = [c for c in controllers if c not in _read(control).split()]
    try:
        for controller in missing:
            _write(control, f"+{controller}")
        return ours
    except OSError as exc:
        refused = exc.strerror
    parent = os.path.dirname(ours.rstrip("/"))
    offered = _read(os.path.join(ours, "cgroup.controllers")).split()
    parent_control = _read(os.path.join(parent, "cgroup.subtree_control")).split()
    if all(c in offered and c in parent_control for c in controllers) and os.access(
        parent, os.W_OK
    ):
        return parent
    raise CgroupError(
        f"cannot enable {' and '.join(controllers)} below {ours} ({refused}) nor use its "
        "parent; run the supervisor in a cgroup with delegated controllers"
    )


def _apply(directory: str, values: list[tuple[str, str, bool]]) -> None:
    for name, value, required in values:
        path = os.path.join(directory, name)
        if not required and not os.path.exists(path):
            continue
        try:
            _write(path, value)
        except OSError:
            if required:
                raise


def join(procs_files: list[str]) -> None:
    """Move the calling process into the cgroups: called in the kernel's child between
    fork and exec, before it drops privileges (raw writes: no Python buffering there)."""
    pid = str(os.getpid()).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
