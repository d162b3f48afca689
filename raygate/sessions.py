"""Sessions: a notebook path tied to a kernel, as jupyter_server and Kernel Gateway keep them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .errors import APIError
from .registry import KernelRegistry


@dataclass
class Session:
    id: str
    path: str
    name: str
    type: str
    kernel_id: str


class SessionStore:
    def __init__(self, registry: KernelRegistry) -> None:
        self.registry = registry
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

    def list(self) -> list[Session]:
        self._prune()
        return list(self.sessions.values())

    def get(self, session_id: str) -> Session:
        self._prune()
        session = self.sessions.get(session_id)
        if session is None:
            raise APIError(404, f"Session not found: {session_id}")
        return session

    async def _kernel_for(self, spec: Any) -> str:
        if not isinstance(spec, dict):
            raise APIError(400, "'kernel' must be an object with 'name' or 'id'")
        kernel_id = spec.get("id")
        if kernel_id:
            return (await self.registry.lookup(str(kernel_id))).id
        kernel = await self.registry.start(spec.get("name"), spec.get("env"))
        return kernel.id

    async def create(self, body: dict[str, Any]) -> Session:
        notebook = body.get("notebook")
        path = body.get("path") or (notebook.get("path") if isinstance(notebook, dict) else None)
        if not isinstance(path, str) or not path:
            raise APIError(400, "'path' is required")
        self._prune()
        for session in self.sessions.values():
            if session.path == path:
                return session
        kernel_id = await self._kernel_for(body.get("kernel") or {})
        session = Session(
            id=str(uuid.uuid4()),
            path=path,
            name=str(body.get("name") or ""),
            type=str(body.get("type") or "notebook"),
            kernel_id=kernel_id,
        )
        self.sessions[session.id] = session
        return session

    async def update(self, session_id: str, body: dict[str, Any]) -> Session:
        session = self.get(session_id)
        for key in ("path", "name", "type"):
            if key in body:
                if not isinstance(body[key], str):
                    raise APIError(400, f"'{key}' must be a string")
                setattr(session, key, body[key])
        if "kernel" in body:
            old = session.kernel_id
            session.kernel_id = await self._kernel_for(body["kernel"])
            if old != session.kernel_id and old in self.registry.kernels:
                await self.registry.shutdown(old)
        return session

    async def delete(self, session_id: str) -> None:
        session = self.get(session_id)
        del self.sessions[session_id]
        if session.kernel_id in self.registry.kernels:
            await self.registry.shutdown(session.kernel_id)
