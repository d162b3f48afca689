"""The process primitives under :class:`~.supervisor.KernelSupervisor`: starting a
process that can be interrupted and never outlives its parent, signalling and stopping its
group, describing its exit, the kernel's argv and connection file.

The supervisor is their one user for kernels; the Dask launcher also starts the bootstrap
itself with :func:`spawn_kernel`, for the same reasons.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from .account import Account, needs_switch
from .cgroups import join

ENCRYPTIONS = ("none", "curve")

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prepare_child(cgroup_procs: Sequence[str] = (), account: Account | None = None) -> None:
    """Runs in the child between fork and exec.

    Ray workers (and some servers) block SIGINT; a child inherits the mask, so an
    interrupt would silently do nothing. The child joins its cgroups (:mod:`.cgroups`)
    while it is still root, then takes the account's groups, gid and uid (in that order).
    PR_SET_PDEATHSIG, set last (a change of uid clears it), makes the kernel die with the
    thread that spawned it, even when that parent is SIGKILLed.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if cgroup_procs:
        join(list(cgroup_procs))
    if account is not None:
        os.setgroups(list(account.groups or (account.gid,)))
        os.setresgid(account.gid, account.gid, account.gid)
        os.setresuid(account.uid, account.uid, account.uid)
    if sys.platform.startswith("linux"):
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def interpreter_names() -> frozenset[str]:
    """The argv[0] values that mean "this Python": ``python``, ``python3`` and
    ``python3.N`` of the running version (as jupyter_client maps them)."""
    major, minor = sys.version_info[:2]
    return frozenset({"python", f"python{major}", f"python{major}.{minor}"})


def format_argv(
    argv: Sequence[str],
    connection_file: str,
    resource_dir: str = "",
    executable: str = sys.executable,
) -> list[str]:
    """A kernelspec argv made runnable here: ``{connection_file}`` and ``{resource_dir}``
    filled in, and an argv[0] that names this Python (:func:`interpreter_names`) replaced by
    ``executable``.

    The stock ipykernel kernelspec says ``python``; looked up on PATH it fails where the
    process runs from a virtualenv that is not activated (a systemd unit, pipx, a Ray node
    started without the venv's ``bin/`` on PATH), or finds another Python without ipykernel.
    """
    fields = {"connection_file": connection_file, "resource_dir": resource_dir}
    out = []
    for arg in argv:
        try:
            out.append(arg.format(**fields))
        except (KeyError, IndexError, ValueError):
            out.append(arg)
    if out and out[0] in interpreter_names() and executable:
        out[0] = executable
    return out


def write_connection_file(path: str, ip: str, encryption: str = "none") -> dict[str, Any]:
    """Write a fresh connection file (free ports, a new HMAC key) for a kernel started here.

    With ``encryption="curve"`` the file also holds a new CurveZMQ keypair, which makes
    the kernel's sockets Curve servers. The secret key is made here, on the kernel's host,
    and stays in the file (mode 0600). Returns what the gateway is told: the file's content
    without the secret key and the kernel name, the HMAC key as text.
    """
    import zmq
    from jupyter_client.connect import write_connection_file as write_file

    if encryption not in ENCRYPTIONS:
        raise ValueError(f"unknown kernel encryption {encryption!r} (known: {ENCRYPTIONS})")
    curve: dict[str, Any] = {}
    if encryption == "curve":
        if not zmq.has("curve"):
            raise ValueError("this host's pyzmq has no CurveZMQ support (libzmq without libsodium)")
        public, secret = zmq.curve_keypair()
        curve = {"curve_publickey": public, "curve_secretkey": secret}
    _, info = write_file(
        path,
        ip=ip,
        key=secrets.token_hex(32).encode(),
        transport="tcp",
        signature_scheme="hmac-sha256",
        **curve,
    )
    told: dict[str, Any] = dict(info)
    told["key"] = told["key"].decode() if isinstance(told["key"], bytes) else told["key"]
    told.pop("curve_secretkey", None)
    told.pop("kernel_name", None)
    return told


def spawn_kernel(
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: str,
    cwd: str | None = None,
    account: Account | None = None,
    cgroup_procs: Sequence[str] = (),
) -> subprocess.Popen:
    """Start ``argv`` in its own session, stdout and stderr to ``log_path``.

    Its own session keeps a Ctrl-C at the gateway's terminal from interrupting every
    kernel, and lets an interrupt reach the kernel's own children through the group.

    ``cgroup_procs``: the ``cgroup.procs`` files of the kernel's cgroups, which the child
    joins before exec, so no line of the kernel runs outside its limits. With an
    ``account`` other than ours, the child then takes its supplementary groups, gid and
    uid before exec (:func:`_prepare_child`). Raises :class:`~.account.AccountError` when
    this process cannot become the account, :class:`subprocess.SubprocessError` when the
    child could not join its cgroup or switch.
    """
    switch = needs_switch(account)
    prepare = partial(_prepare_child, tuple(cgroup_procs), account if switch else None)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=prepare,
            close_fds=True,
        )


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Signal the kernel's process group (the kernel and what it started)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.send_signal(signum)


async def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    """Wait up to ``timeout`` seconds for the process to exit, without blocking the loop."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return proc.poll()


async def terminate(proc: subprocess.Popen, grace: float = 3.0) -> int | None:
    """SIGTERM the kernel's group, then SIGKILL it if it is still there after ``grace``."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        await wait_exit(proc, grace)
    try:
        # Children of the kernel may still hold the group after the kernel itself exits.
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return await wait_exit(proc, 5.0)


def describe_exit(code: int | None) -> str:
    """A process's exit status in words (``Popen.returncode``: negative for a signal)."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def tail(path: str, max_bytes: int = 4096, max_lines: int = 25) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-max_lines:]).strip()
