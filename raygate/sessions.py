"""Sessions: a notebook path tied to a kernel, as jupyter_server and Kernel Gateway keep them.

Each session belongs to the user who created it (None: no particular user, as in a
single-user gateway). A user sees and changes only their own sessions, and two users'
notebooks at the same path are two sessions; admins and requests that name no user see all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .config import GatewayConfig
from .errors import APIError
from .kernels.registry import KernelRegistry
from .users import may_see


@dataclass
class Session:
    id: str
    path: str
    name: str
    type: str
    kernel_id: str
    owner: str | None = None


class SessionStore:
    def __init__(self, registry: KernelRegistry, config: GatewayConfig) -> None:
        self.registry = registry
        self.config = config
        self.sessions: dict[str, Session] = {}

    def _prune(self) -> None:
        """Sessions whose kernel is gone are gone too."""
        for session in list(self.sessions.values()):
            if session.kernel_id not in self.registry.kernels:
                del self.sessions[session.id]

    def model(self, session: Session) -> dict[str, Any]:
        kernel = self.registry.kernels.get(session.kernel_id)
        return {
            "id": session.id,
            "path": session.path,
            "name": session.name,
            "type": session.type,
            "kernel": kernel.model() if kernel else None,
            "notebook": {"path": session.path, "name": session.name},
        }

    def list(self, user: str | None, groups: frozenset[str] = frozenset()) -> list[Session]:
        self._prune()
        return [s for s in self.sessions.values() if may_see(self.config, user, s.owner, groups)]

    def get(
        self, session_id: str, user: str | None, groups: frozenset[str] = frozenset()
    ) -> Session:
        self._prune()
        session = self.sessions.get(session_id)
        if session is None or not may_see(self.config, user, session.owner, groups):
            raise APIError(404, f"Session not found: {session_id}")
        return session

    async def _kernel_for(self, spec: Any, user: str | None, groups: frozenset[str]) -> str:
        if not isinstance(spec, dict):
            raise APIError(400, "'kernel' must be an object with 'name' or 'id'")
        kernel_id = spec.get("id")
        if kernel_id:
            kernel = await self.registry.lookup(str(kernel_id))
            if not may_see(self.config, user, kernel.username, groups):
                raise APIError(404, f"Kernel does not exist: {kernel_id}")
            return kernel.id
        kernel = await self.registry.start(
            spec.get("name"), spec.get("env"), user=user, groups=groups
        )
        return kernel.id

    async def create(
        self, body: dict[str, Any], user: str | None, groups: frozenset[str] = frozenset()
    ) -> Session:
        notebook = body.get("notebook")
        path = body.get("path") or (notebook.get("path") if isinstance(notebook, dict) else None)
        if not isinstance(path, str) or not path:
            raise APIError(400, "'path' is required")
        self._prune()
        for session in self.sessions.values():
            if session.path == path and session.owner == user:
                return session
        kernel_id = await self._kernel_for(body.get("kernel") or {}, user, groups)
        session = Session(
            id=str(uuid.uuid4()),
            path=path,
            name=str(body.get("name") or ""),
            type=str(body.get("type") or "notebook"),
            kernel_id=kernel_id,
            owner=user,
        )
        self.sessions[session.id] = session
        return session

    async def update(
        self,
        session_id: str,
        body: dict[str, Any],
        user: str | None,
        groups: frozenset[str] = frozenset(),
    ) -> Session:
        session = self.get(session_id, user, groups)
        for key in ("path", "name", "type"):
            if key in body:
                if not isinstance(body[key], str):
                    raise APIError(400, f"'{key}' must be a string")
                setattr(session, key, body[key])
        if "kernel" in body:
            old = session.kernel_id
            session.kernel_id = await self._kernel_for(body["kernel"], user, groups)
            if old != session.kernel_id and old in self.registry.kernels:
                await self.registry.shutdown(old)
        return session

    async def delete(
        self, session_id: str, user: str | None, groups: frozenset[str] = frozenset()
    ) -> None:
        session = self.get(session_id, user, groups)
        del self.sessions[session_id]
        if session.kernel_id in self.registry.kernels:
            await self.registry.shutdown(session.kernel_id)
