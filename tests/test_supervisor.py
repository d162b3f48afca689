"""The kernel supervisor on its own (no gateway): environment precedence, argv, spawn,
restart, stop, exit descriptions and running a kernel as another OS account.

The "kernels" here are small Python programs that report what they were started with;
the real ipykernel through every launcher is tested elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from raygate.launchers.kernelside import account as account_module
from raygate.launchers.kernelside.account import Account, AccountError
from raygate.launchers.kernelside.env import RUNTIME_ONLY_ENV, kernel_env
from raygate.launchers.kernelside.process import describe_exit, format_argv
from raygate.launchers.kernelside.supervisor import KernelCommand, KernelSupervisor, SpawnError

# Prints what the process was started with as one JSON line, then waits to be stopped.
REPORTER = (
    "import json, os, sys, time\n"
    "blocked = [l for l in open('/proc/self/status') if l.startswith('SigBlk')][0]\n"
    "print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), 'uid': os.getuid(),"
    " 'gid': os.getgid(), 'groups': sorted(os.getgroups()), 'env': dict(os.environ),"
    " 'sid': os.getsid(0), 'pid': os.getpid(), 'blocked': int(blocked.split()[1], 16),"
    " 'executable': sys.executable}), flush=True)\n"
    "time.sleep(600)\n"
)


def command(code: str = REPORTER, **fields: object) -> KernelCommand:
    return KernelCommand(
        kernel_id=str(uuid.uuid4()), argv=["python", "-c", code, "{connection_file}"], **fields
    )


def started(cmd: KernelCommand, tmp_path: Path, **options: object) -> KernelSupervisor:
    supervisor = KernelSupervisor(cmd, ip="127.0.0.1", runtime_root=str(tmp_path), **options)
    supervisor.start()
    return supervisor


def report(supervisor: KernelSupervisor, timeout: float = 20.0) -> dict:
    """What the REPORTER kernel printed (its first line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = Path(supervisor.log_path).read_text()
        if text.endswith("\n"):
            return json.loads(text.splitlines()[0])
        assert supervisor.alive(), supervisor.exit_reason()
        time.sleep(0.02)
    raise AssertionError(f"the kernel printed nothing: {supervisor.exit_reason()}")


def wait_exit(supervisor: KernelSupervisor, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while supervisor.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not supervisor.alive()


# -- the environment ------------------------------------------------------------------


def test_env_layers_in_their_documented_order() -> None:
    env = kernel_env(
        "kid",
        host={"A": "host", "B": "host", "C": "host", "D": "host", "E": "host", "RAY_JOB_ID": "j"},
        defaults={"B": "default", "C": "default", "D": "default", "E": "default"},
        spec={"C": "spec", "D": "spec", "E": "spec"},
        request={"D": "request", "E": "request", "KERNEL_ID": "forged", "KERNEL_USERNAME": "eve"},
        username="ada",
        assigned={"E": "assigned"},
    )
    assert env == {
        "A": "host",
        "B": "default",
        "C": "spec",
        "D": "request",
        "E": "assigned",
        "KERNEL_ID": "kid",
        "KERNEL_USERNAME": "ada",
    }


def test_env_without_a_user_keeps_the_requests_name_and_drops_runtime_only_variables() -> None:
    host = {name: "x" for name in RUNTIME_ONLY_ENV} | {"PATH": "/bin"}
    env = kernel_env("kid", host=host, request={"KERNEL_USERNAME": "bob"})
    assert env == {"PATH": "/bin", "KERNEL_ID": "kid", "KERNEL_USERNAME": "bob"}


def test_env_of_an_account_is_its_login_over_everything() -> None:
    account = Account("ada", 1000, 1000, (1000,), "/home/ada")
    env = kernel_env(
        "k", host={"HOME": "/root", "USER": "root"}, request={"HOME": "/tmp"}, account=account
    )
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == ("/home/ada", "ada", "ada")


# -- argv ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["python", "python3", f"python3.{sys.version_info[1]}"])
def test_this_python_means_the_supervisors_interpreter(name: str) -> None:
    argv = format_argv([name, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "/r/c.json")
    assert argv == [sys.executable, "-m", "ipykernel_launcher", "-f", "/r/c.json"]


@pytest.mark.parametrize("name", ["python2", "python3.1", "/usr/bin/python", "python-wrapper"])
def test_other_programs_are_left_alone(name: str) -> None:
    assert format_argv([name, "x"], "c")[0] == name


def test_argv_fields_are_filled_and_odd_braces_kept() -> None:
    argv = ["k", "{connection_file}", "--res={resource_dir}", "{unknown}", "{", "python"]
    assert format_argv(argv, "/c.json", "/res") == [
        "k",
        "/c.json",
        "--res=/res",
        "{unknown}",
        "{",
        "python",
    ]


# -- spawning, the process's state -----------------------------------------------------


def test_a_kernel_starts_with_its_env_argv_and_files(tmp_path: Path) -> None:
    cmd = command(
        spec_env={"FROM": "spec", "BOTH": "spec"},
        request_env={"BOTH": "request"},
        username="ada",
        cwd=str(tmp_path),
    )
    supervisor = started(cmd, tmp_path, assigned={"CUDA_VISIBLE_DEVICES": ""})
    try:
        seen = report(supervisor)
        assert seen["executable"] == sys.executable  # "python" was not looked up on PATH
        assert seen["argv"][1] == supervisor.connection_file
        assert seen["cwd"] == str(tmp_path)
        env = seen["env"]
        assert (env["FROM"], env["BOTH"], env["KERNEL_ID"]) == ("spec", "request", cmd.kernel_id)
        assert (env["KERNEL_USERNAME"], env["CUDA_VISIBLE_DEVICES"]) == ("ada", "")
        assert seen["sid"] == seen["pid"]  # a session of its own
        # The connection file the kernel is told about, private to its owner.
        info = json.loads(Path(supervisor.connection_file).read_text())
        assert info["shell_port"] == supervisor.connection["shell_port"]
        assert stat.S_IMODE(os.stat(supervisor.connection_file).st_mode) == 0o600
        assert os.stat(supervisor.runtime_dir).st_mode & 0o777 == 0o700  # (+ sticky)
    finally:
        asyncio.run(supervisor.shutdown())
    assert not os.path.exists(supervisor.runtime_dir)


def test_a_missing_working_directory_is_ignored(tmp_path: Path) -> None:
    supervisor = started(command(cwd=str(tmp_path / "nowhere")), tmp_path)
    try:
        assert report(supervisor)["cwd"] == os.getcwd()
    finally:
        asyncio.run(supervisor.shutdown())


def test_signals_blocked_in_the_spawning_thread_are_unblocked_in_the_kernel(
    tmp_path: Path,
) -> None:
    """As in a Ray worker, which blocks SIGINT: the kernel must still be interruptible."""
    blocking = ThreadPoolExecutor(
        1, initializer=signal.pthread_sigmask, initargs=(signal.SIG_BLOCK, {signal.SIGINT})
    )
    supervisor = started(command(), tmp_path, spawner=blocking)
    try:
        assert not report(supervisor)["blocked"] & (1 << (signal.SIGINT - 1))
        supervisor.signal(signal.SIGINT)  # the default action: it dies of it
        wait_exit(supervisor)
        assert supervisor.exit_reason().startswith("killed by signal SIGINT")
    finally:
        asyncio.run(supervisor.shutdown())
        blocking.shutdown()


def test_a_kernel_dies_with_the_thread_that_spawned_it(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a kernel never outlives its supervisor (the Ray actor keeps one
    spawning thread for its whole life for this reason)."""
    result: list[KernelSupervisor] = []
    thread = threading.Thread(target=lambda: result.append(started(command(), tmp_path)))
    thread.start()
    thread.join()
    supervisor = result[0]
    try:
        wait_exit(supervisor)
        assert describe_exit(supervisor.returncode()) == "killed by signal SIGKILL"
    finally:
        asyncio.run(supervisor.shutdown())


def test_a_kernel_that_fails_is_described_with_its_output(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('boom: no such module foo'); sys.exit(3)"
    exits: list[str] = []
    supervisor = started(command(code), tmp_path, on_exit=exits.append)
    try:
        wait_exit(supervisor)
        assert supervisor.returncode() == 3
        assert supervisor.exit_reason() == "exited with code 3: boom: no such module foo"
        deadline = time.monotonic() + 5
        while not exits and time.monotonic() < deadline:
            time.sleep(0.02)
        assert exits == ["exited with code 3: boom: no such module foo"]
    finally:
        asyncio.run(supervisor.shutdown())


def test_a_command_that_does_not_exist_is_a_spawn_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    cmd = KernelCommand(kernel_id=str(uuid.uuid4()), argv=["no-such-kernel-program", "-f"])
    supervisor = KernelSupervisor(cmd, ip="127.0.0.1", runtime_root=str(tmp_path))
    with pytest.raises(SpawnError, match="could not run kernel command 'no-such-kernel-program'"):
        supervisor.start()
    assert list(tmp_path.iterdir()) == []


def test_restart_is_a_new_process_on_the_same_ports_and_stop_is_not_an_exit_to_report(
    tmp_path: Path,
) -> None:
    exits: list[str] = []
    cmd = command()
    supervisor = started(cmd, tmp_path, on_exit=exits.append, keep_output_bytes=1 << 20)
    try:
        first = report(supervisor)["pid"]
        connection = dict(supervisor.connection)
        # A warm kernel handed to a request: the restart takes the new command.
        supervisor.command = KernelCommand(
            cmd.kernel_id, cmd.argv, request_env={"KERNEL_X": "handed out"}
        )
        Path(supervisor.log_path).write_text("")
        assert asyncio.run(supervisor.restart()) == connection
        seen = report(supervisor)
        assert seen["pid"] != first and seen["env"]["KERNEL_X"] == "handed out"
        assert supervisor.keeper is not None and supervisor.kept_output([]) == ([], True, 0)
        asyncio.run(supervisor.stop())
        assert not supervisor.alive()
        assert describe_exit(supervisor.returncode()) == "killed by signal SIGTERM"
        time.sleep(0.2)
        assert exits == []  # exits asked for are not news
    finally:
        asyncio.run(supervisor.shutdown())


def test_stop_kills_what_the_kernel_started(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    supervisor = started(command(code), tmp_path)
    try:
        deadline = time.monotonic() + 20
        while not Path(supervisor.log_path).read_text().endswith("\n"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child = int(Path(supervisor.log_path).read_text())
    finally:
        asyncio.run(supervisor.shutdown())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{child}")


# -- running as another account ----------------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
    reason="only root can start processes as others (and a Python they may run is needed)",
)


def test_another_account_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(account_module.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(account_module.os, "getegid", lambda: 1000)
    other = Account("somebody", 1001, 1001)
    with pytest.raises(AccountError, match=r"uid 1001.*runs as uid 1000, not as root"):
        KernelSupervisor(command(), ip="127.0.0.1", account=other, runtime_root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    # One's own account needs nothing.
    KernelSupervisor(command(), ip="127.0.0.1", account=Account("me", 1000, 1000))


def test_an_unknown_account_is_a_clear_error() -> None:
    with pytest.raises(AccountError, match="no account 'no-such-user-here'"):
        Account.lookup("no-such-user-here")


def test_an_account_travels_as_json() -> None:
    account = Account("ada", 1000, 100, (100, 27), "/home/ada")
    assert Account.from_dict(json.loads(json.dumps(account.to_dict()))) == account


@needs_root
def test_a_kernel_runs_as_its_account_and_owns_its_files(tmp_path: Path) -> None:
    nobody = Account.lookup("nobody")
    assert nobody.uid == 65534
    os.chmod(tmp_path, 0o755)  # the kernel's directory inside is what keeps others out
    # An interpreter the account may run (this one may live under root's 0700 home).
    cmd = command()
    cmd.argv[0] = SYSTEM_PYTHON
    supervisor = started(cmd, tmp_path, account=nobody)
    try:
        seen = report(supervisor)
        assert (seen["uid"], seen["gid"]) == (nobody.uid, nobody.gid)
        assert seen["groups"] == sorted(set(nobody.groups))  # root's groups are gone
        assert (seen["env"]["USER"], seen["env"]["HOME"]) == ("nobody", nobody.home)
        for path, mode in (
            (supervisor.runtime_dir, 0o700),
            (supervisor.connection_file, 0o600),
            (supervisor.log_path, 0o600),
        ):
            st = os.stat(path)
            assert (st.st_uid, st.st_mode & 0o777) == (nobody.uid, mode), path
        # Another account (not root) cannot read the connection file.
        other = 65533  # neither root nor the kernel's account
        probe = subprocess.run(
            [SYSTEM_PYTHON, "-c", f"open({supervisor.connection_file!r}).read()"],
            user=other,
            group=other,
            extra_groups=[],
            capture_output=True,
            text=True,
        )
        assert probe.returncode != 0 and "PermissionError" in probe.stderr
        # Root (the supervisor) still signals and stops it.
        asyncio.run(supervisor.restart())
        assert report(supervisor)["uid"] == nobody.uid
    finally:
        asyncio.run(supervisor.shutdown())
