"""Trust on first use of SSH host keys (``--ssh-accept-new-host-keys``).

Apart from :mod:`.ssh` so that asyncssh, slow to import, is imported only by a gateway
that connects to SSH hosts.
"""

from __future__ import annotations

import logging

import asyncssh

log = logging.getLogger("raygate.launchers.ssh")


def known_host_entry(host: str, port: int, key: asyncssh.SSHKey) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    algorithm, data = key.export_public_key("openssh").decode().split()[:2]
    return f"{name} {algorithm} {data}\n"


class AcceptNewHostKeys(asyncssh.SSHClient):
    """Trusts the key of a host the known_hosts file has never heard of, and records it.

    Called by asyncssh only for keys that known_hosts does not already trust; a host that
    has an entry with another key is refused (its key changed).
    """

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        try:
            keys = asyncssh.match_known_hosts(self.known_hosts, host, addr, port)[0]
        except (OSError, ValueError):
            keys = []
        if keys:
            log.error("host key of %s:%d does not match %s; refusing", host, port, self.known_hosts)
            return False
        with open(self.known_hosts, "a") as f:
            f.write(known_host_entry(host, port, key))
        log.warning("accepted the new host key of %s:%d into %s", host, port, self.known_hosts)
        return True
