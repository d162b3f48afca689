"""A private OpenSSH server on loopback for the SSH launcher's tests.

Its own config, host key, client key and authorized_keys live in a temporary directory;
it listens on one free port on several loopback addresses (Linux answers all of 127/8),
so each address is one "host". Key login only; root may log in (tests run as root in CI).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port(addresses: list[str]) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
        ok = True
        for addr in addresses[1:]:
            with socket.socket() as s:
                try:
                    s.bind((addr, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no port free on every test address")


class SSHServer:
    def __init__(self, root: str, addresses: list[str], unlisted: list[str] = ()) -> None:
        """Serve on ``addresses`` (in known_hosts) and ``unlisted`` (not in known_hosts)."""
        self.root = root
        self.addresses = list(addresses)
        self.unlisted = list(unlisted)
        self.port = _free_port(self.addresses + self.unlisted)
        self.host_key = os.path.join(root, "ssh_host_ed25519_key")
        self.client_key = os.path.join(root, "id_ed25519")
        self.known_hosts = os.path.join(root, "known_hosts")
        self.config = os.path.join(root, "sshd_config")
        self.log_path = os.path.join(root, "sshd.log")
        self.proc: subprocess.Popen | None = None

    def hosts(self, addresses: list[str] | None = None) -> list[str]:
        return [f"{a}:{self.port}" for a in (addresses or self.addresses)]

    def _keygen(self, path: str) -> None:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "raygate-test", "-f", path],
            check=True,
        )

    def start(self) -> None:
        os.chmod(self.root, 0o700)
        self._keygen(self.host_key)
        self._keygen(self.client_key)
        shutil.copy(self.client_key + ".pub", os.path.join(self.root, "authorized_keys"))
        with open(self.host_key + ".pub") as f:
            algorithm, key = f.read().split()[:2]
        with open(self.known_hosts, "w") as f:
            for addr in self.addresses:
                f.write(f"[{addr}]:{self.port} {algorithm} {key}\n")
        listen = "".join(f"ListenAddress {a}:{self.port}\n" for a in self.addresses + self.unlisted)
        with open(self.config, "w") as f:
            f.write(
                f"{listen}"
                f"HostKey {self.host_key}\n"
                f"AuthorizedKeysFile {self.root}/authorized_keys\n"
                f"PidFile {self.root}/sshd.pid\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "PermitRootLogin prohibit-password\n"
                "UsePAM no\n"
                "StrictModes no\n"
                "PrintMotd no\n"
                "LogLevel INFO\n"
                "MaxStartups 50\n"
            )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", self.config],
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited:\n{self.output()}")
            try:
                with socket.create_connection((self.addresses[0], self.port), timeout=1) as s:
                    if s.recv(4) == b"SSH-":
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd did not come up:\n{self.output()}")

    def output(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
