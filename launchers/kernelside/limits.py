"""A kernel's memory and CPU limits, and how its host enforces them.

The gateway decides the limits (``KERNEL_MEMORY_LIMIT`` / ``KERNEL_CPUS_LIMIT``, else the
kernelspec's ``memory_limit`` / ``cpus_limit``, else the operator's
``--kernel-memory-limit-default`` / ``--kernel-cpus-limit-default``); they travel in the
launch request's resources to wherever the kernel runs, and the
:class:`~.supervisor.KernelSupervisor` there enforces them with an :class:`Enforcer`:

* a **cgroup** of the kernel's own (:mod:`.cgroups`, v1 or v2, whichever holds the
  controller on this host): the kernel joins it before it execs, everything it starts is
  in it, the OS stops it at the memory limit and throttles it to its CPU quota;
* a **watchdog** where no cgroup can be made (not root, a read-only or undelegated
  cgroupfs): a thread polls the memory of the kernel's process tree (PSS, else RSS) and
  stops the kernel once it is over its limit. It cannot throttle CPU.

Which one is chosen per host: ``RAYGATE_KERNEL_LIMITS`` in the supervisor's environment is
``auto`` (the default: a cgroup where one can be made, else the watchdog), ``cgroup`` (the
same; says so when it falls back), ``watchdog`` or ``off`` (limits are left to something
else, e.g. a pod's own limits). ``RAYGATE_KERNEL_WATCHDOG_INTERVAL`` is the watchdog's
poll interval in seconds (default 0.5).

A kernel stopped for its memory is described as such (:meth:`Enforcer.over_limit`), so the
gateway's notice of its death names the limit; the gateway then restarts it as it does any
kernel that died (up to ``--restart-limit``), under the same limits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from raygate.resources import format_bytes  # pure, stdlib only

from .cgroups import CgroupError, KernelCgroup

log = logging.getLogger("raygate.kernelside")

MECHANISMS = ("auto", "cgroup", "watchdog", "off")
MECHANISM_ENV = "RAYGATE_KERNEL_LIMITS"
INTERVAL_ENV = "RAYGATE_KERNEL_WATCHDOG_INTERVAL"
DEFAULT_INTERVAL = 0.5


@dataclass(frozen=True)
class KernelLimits:
    """The most one kernel may use; ``None``: no limit."""

    memory: int | None = None
    """Bytes."""
    cpus: float | None = None

    def __bool__(self) -> bool:
        return self.memory is not None or self.cpus is not None

    @classmethod
    def from_resources(cls, resources: Any) -> KernelLimits:
        """The limits of a resource request (a ``ResourceRequest`` or its dict form)."""
        if resources is None:
            return cls()
        if not isinstance(resources, Mapping):
            resources = {
                "memory_limit": resources.memory_limit,
                "cpus_limit": resources.cpus_limit,
            }
        memory, cpus = resources.get("memory_limit"), resources.get("cpus_limit")
        return cls(
            memory=int(memory) if memory else None,
            cpus=float(cpus) if cpus else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON form, to travel to a bootstrap."""
        return {"memory_limit": self.memory, "cpus_limit": self.cpus}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> KernelLimits:
        return cls.from_resources(data or {})

    def memory_words(self) -> str:
        return format_bytes(self.memory) if self.memory is not None else "none"

    def describe(self) -> str:
        """``memory 200.0 MiB, 0.5 CPUs`` (for logs and messages)."""
        parts = []
        if self.memory is not None:
            parts.append(f"memory {self.memory_words()}")
        if self.cpus is not None:
            parts.append(f"{self.cpus:g} CPU" + ("" if self.cpus == 1 else "s"))
        return ", ".join(parts) or "no limits"


def over_limit_message(limits: KernelLimits, used: int | None = None) -> str:
    """What the user is told about a kernel stopped for its memory."""
    seen = f" (it had {format_bytes(used)})" if used else ""
    return (
        f"stopped by raygate: the kernel used more than its memory limit of "
        f"{limits.memory_words()}{seen} (KERNEL_MEMORY_LIMIT)"
    )


def mechanism(env: Mapping[str, str] | None = None) -> str:
    """The host's choice of mechanism (``RAYGATE_KERNEL_LIMITS``), checked."""
    value = (env if env is not None else os.environ).get(MECHANISM_ENV, "auto").strip().lower()
    if value not in MECHANISMS:
        raise ValueError(f"{MECHANISM_ENV} must be one of {', '.join(MECHANISMS)}, not {value!r}")
    return value or "auto"


def watchdog_interval(env: Mapping[str, str] | None = None) -> float:
    raw = (env if env is not None else os.environ).get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_INTERVAL
    except ValueError:
        value = DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


# -- the process tree's memory (the watchdog) ----------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _parents(proc_root: str = "/proc") -> dict[int, int]:
    """pid -> parent pid of every process (from ``/proc/<pid>/stat``)."""
    out = {}
    for entry in os.scandir(proc_root):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{proc_root}/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its end.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            out[int(entry.name)] = int(fields[1])
    return out


def descendants(pid: int, parents: Mapping[int, int]) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, ()))
    return out


def process_memory(pid: int, proc_root: str = "/proc") -> int:
    """A process's proportional set size (shared pages split among their users), else its
    resident set size; 0 for a process that is gone."""
    try:
        with open(f"{proc_root}/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"{proc_root}/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
"""Whether this kernel lists each task's children (CONFIG_PROC_CHILDREN)."""


def tree_pids(pid: int, proc_root: str = "/proc") -> list[int]:
    """``pid`` and its descendants: from each task's ``children`` file where the kernel
    has them (a few reads per poll), else from every process's parent (a scan of /proc)."""
    if not _CHILDREN_FILES or proc_root != "/proc":
        return descendants(pid, _parents(proc_root))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", "rb") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue  # gone meanwhile
    return out


def tree_memory(pid: int, proc_root: str = "/proc") -> tuple[int, list[int]]:
    """The memory of ``pid``'s process tree, and its pids."""
    pids = tree_pids(pid, proc_root)
    return sum(process_memory(p, proc_root) for p in pids), pids


class Watchdog:
    """Polls a kernel's process tree and kills it when it is over its memory limit.

    Started by :class:`Enforcer` for each kernel process; ``on_kill`` is told the memory
    seen, before the kill, so the exit it causes is described as a limit stop."""

    def __init__(
        self, pid: int, limit: int, interval: float, on_kill: Callable[[int], None]
    ) -> None:
        self.pid = pid
        self.limit = limit
        self.interval = interval
        self.on_kill = on_kill
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernel-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            used, pids = tree_memory(self.pid)
            if used == 0:
                return  # the kernel is gone
            if used <= self.limit:
                continue
            self.on_kill(used)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            return

    def stop(self) -> None:
        self._stop.set()


class Enforcer:
    """One kernel's limits on its host, for the life of its supervisor: a cgroup made at
    the first spawn and kept across restarts, or a watchdog per kernel process.

    Used by :class:`~.supervisor.KernelSupervisor`: :meth:`prepare` before each spawn
    (returns the ``cgroup.procs`` files the child joins before exec), :meth:`started`
    after it, :meth:`over_limit` when the kernel exited, :meth:`close` when it is gone.
    """

    def __init__(
        self,
        kernel_id: str,
        limits: KernelLimits,
        env: Mapping[str, str] | None = None,
        cgroup_factory: Callable[[str, KernelLimits], KernelCgroup] = KernelCgroup.create,
    ) -> None:
        self.kernel_id = kernel_id
        self.limits = limits
        self.mechanism = mechanism(env) if limits else "off"
        self.interval = watchdog_interval(env)
        self.cgroup_factory = cgroup_factory
        self.cgroup: KernelCgroup | None = None
        self.kind = "off"
        """What enforces the limits now: ``cgroup v1``/``cgroup v2``, ``watchdog``, ``off``."""
        self._watchdog: Watchdog | None = None
        self._killed_at: int | None = None
        self._oom_baseline = 0
        self._lock = threading.Lock()

    def prepare(self) -> list[str]:
        """Before a spawn: make the cgroup (once) and note its OOM kills so far; the
        ``cgroup.procs`` files the new process must join (empty: no cgroup)."""
        with self._lock:
            self._killed_at = None
        if self.mechanism == "off":
            return []
        if self.cgroup is None and self.mechanism in ("auto", "cgroup"):
            try:
                self.cgroup = self.cgroup_factory(self.kernel_id, self.limits)
            except CgroupError as exc:
                log.log(
                    logging.WARNING if self.mechanism == "cgroup" else logging.INFO,
                    "kernel %s: no cgroup for its limits (%s): %s",
                    self.kernel_id,
                    exc,
                    "memory watched by polling instead; CPUs not limited"
                    if self.limits.memory
                    else "its CPU limit is not enforced",
                )
                self.mechanism = "watchdog"
        if self.cgroup is not None:
            self.kind = f"cgroup v{self.cgroup.version}"
            self._oom_baseline = self.cgroup.oom_kills()
            return self.cgroup.procs_files()
        self.kind = "watchdog" if self.limits.memory else "off"
        return []

    def started(self, pid: int) -> None:
        """After a spawn: start the watchdog for this process where there is no cgroup."""
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self.kind == "watchdog" and self.limits.memory:
            self._watchdog = Watchdog(pid, self.limits.memory, self.interval, self._killing)
        log.info(
            "kernel %s: limits %s enforced by %s", self.kernel_id, self.limits.describe(), self.kind
        )

    def _killing(self, used: int) -> None:
        with self._lock:
            self._killed_at = used
        log.warning(
            "kernel %s: %s over its memory limit of %s; killing it",
            self.kernel_id,
            format_bytes(used),
            self.limits.memory_words(),
        )

    def over_limit(self) -> str:
        """When the kernel process was stopped for its memory, the message that says so;
        else empty."""
        with self._lock:
            killed = self._killed_at
        if killed is not None:
            return over_limit_message(self.limits, killed)
        cgroup = self.cgroup
        if cgroup is not None and self.limits.memory and cgroup.oom_kills() > self._oom_baseline:
            return over_limit_message(self.limits)
        return ""

    def stopped(self) -> None:
        """The kernel process was stopped: stop its watchdog, kill what is left in its
        cgroup (a process that left the kernel's process group)."""
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def close(self) -> None:
        """The kernel is gone for good: remove its cgroup."""
        self.stopped()
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
