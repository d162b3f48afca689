"""A real MIT Kerberos KDC on loopback for the tests: its own realm, database, principals
and keytabs under a temporary directory (Debian's ``krb5-kdc`` and ``krb5-admin-server``
packages: ``kdb5_util``, ``kadmin.local``, ``krb5kdc``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from conftest import free_port, missing

REALM = "TEST.RAYGATE"
TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local")


def tool(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if found is None:
        missing(f"the Kerberos KDC's {name}", "apt-get install krb5-kdc krb5-admin-server")
    return found


class TestKDC:
    """One realm: ``principal(name)`` makes a principal with a random key and writes its
    keytab; ``env`` is what a process needs to use this realm (``KRB5_CONFIG``)."""

    __test__ = False  # not a test class

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.krb5_conf = root / "krb5.conf"
        self.kdc_conf = root / "kdc.conf"
        self.krb5_conf.write_text(
            "[libdefaults]\n"
            f"  default_realm = {REALM}\n"
            "  dns_lookup_kdc = false\n"
            "  dns_lookup_realm = false\n"
            "  rdns = false\n"
            "  dns_canonicalize_hostname = false\n"
            "  udp_preference_limit = 1\n"  # TCP: the port was checked free for TCP
            "[realms]\n"
            f"  {REALM} = {{\n    kdc = 127.0.0.1:{self.port}\n  }}\n"
            "[domain_realm]\n"
            f"  localhost = {REALM}\n"
        )
        self.kdc_conf.write_text(
            "[kdcdefaults]\n"
            f"  kdc_ports = {self.port}\n  kdc_tcp_ports = {self.port}\n"
            "[realms]\n"
            f"  {REALM} = {{\n"
            f"    database_name = {root}/principal\n"
            f"    key_stash_file = {root}/stash\n"
            f"    acl_file = {root}/kadm5.acl\n"
            "  }\n"
            "[logging]\n"
            f"  kdc = FILE:{root}/kdc.log\n"
        )
        (root / "kadm5.acl").write_text("")
        self.env = {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.kdc_conf)}
        self._run(tool("kdb5_util"), "create", "-s", "-r", REALM, "-P", "test-master-key")
        self.proc = subprocess.Popen(
            [tool("krb5kdc"), "-n", "-r", REALM],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=open(root / "krb5kdc.out", "wb"),
        )
        self._wait_listening()

    def _run(self, *argv: str) -> None:
        subprocess.run(
            argv, env={**os.environ, **self.env}, check=True, capture_output=True, timeout=60
        )

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "krb5kdc did not start: " + (self.root / "krb5kdc.out").read_text()
                    ) from None
                time.sleep(0.05)

    def principal(self, name: str) -> tuple[str, str]:
        """``(principal@REALM, keytab path)`` of a new principal with a random key."""
        keytab = self.root / (name.replace("/", "_") + ".keytab")
        kadmin = tool("kadmin.local")
        self._run(kadmin, "-r", REALM, "-q", f"addprinc -randkey {name}@{REALM}")
        self._run(kadmin, "-r", REALM, "-q", f"ktadd -k {keytab} {name}@{REALM}")
        return f"{name}@{REALM}", str(keytab)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
