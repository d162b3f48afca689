"""Where kernels run: one module per environment behind :mod:`.base`.

Launcher kinds are found through the ``raygate.launchers`` entry-point group: raygate
registers its own there (``pyproject.toml``), and any installed package may add more.
"""

from __future__ import annotations

import importlib.util
import logging
from importlib.metadata import EntryPoint, entry_points

from .base import (
    ConnectionInfo,
    KernelHandle,
    KernelSpecInfo,
    KernelStartError,
    Launcher,
    LaunchRequest,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ConnectionInfo",
    "KernelHandle",
    "KernelSpecInfo",
    "KernelStartError",
    "LaunchRequest",
    "Launcher",
    "LauncherError",
    "launcher_kinds",
]

ENTRY_POINT_GROUP = "raygate.launchers"

log = logging.getLogger("raygate.launchers")


class LauncherError(Exception):
    """A registered launcher that cannot be used (it fails to import, or is no launcher);
    the gateway refuses to start with it, naming the entry point."""


def _is_own(ep: EntryPoint) -> bool:
    return ep.value.startswith("raygate.")


def _load(ep: EntryPoint) -> type[Launcher] | None:
    """The launcher class of one entry point; ``None`` for one of raygate's own whose
    optional dependency (an extra such as ``raygate[ssh]``) is not installed."""
    try:
        cls = ep.load()
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if _is_own(ep) and top != "raygate":
            log.debug("launcher %s not offered: %s is not installed", ep.name, exc.name)
            return None
        raise LauncherError(
            f"launcher {ep.name!r} ({ep.value}, entry point of {_dist(ep)}) cannot be "
            f"imported: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise LauncherError(
            f"launcher {ep.name!r} ({ep.value}, entry point of {_dist(ep)}) cannot be "
            f"imported: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Launcher)):
        raise LauncherError(
            f"launcher {ep.name!r} ({ep.value}, entry point of {_dist(ep)}) is not a "
            "raygate.launchers.base.Launcher subclass"
        )
    if getattr(cls, "kind", None) != ep.name:
        raise LauncherError(
            f"launcher {ep.name!r} ({ep.value}, entry point of {_dist(ep)}) says its kind "
            f"is {getattr(cls, 'kind', None)!r}: the entry point's name and the class's "
            "kind must be the same"
        )
    missing = [name for name in cls.requires if importlib.util.find_spec(name) is None]
    if missing:
        log.debug("launcher %s not offered: %s not installed", ep.name, ", ".join(missing))
        return None
    return cls


def _dist(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "an unknown package"


def launcher_kinds() -> dict[str, type[Launcher]]:
    """The launcher classes by kind, from the ``raygate.launchers`` entry points.

    Called by ``raygate serve`` (its options) and ``create_app`` (the launchers). Raises
    :class:`LauncherError` for a registered launcher that cannot be used, and for a kind
    two packages register.
    """
    kinds: dict[str, type[Launcher]] = {}
    origin: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        # The same distribution seen twice on sys.path (e.g. an editable install and a
        # --target copy) registers the same class: not a conflict.
        if ep.name in kinds and origin[ep.name] == ep.value:
            continue
        cls = _load(ep)
        if cls is None:
            continue
        if ep.name in kinds:
            raise LauncherError(
                f"launcher kind {ep.name!r} is registered twice: {origin[ep.name]} and {ep.value}"
            )
        kinds[ep.name] = cls
        origin[ep.name] = ep.value
    return kinds
