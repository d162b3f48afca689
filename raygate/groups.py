"""Groups of users, as user lists and per-group caps name them (pure; no gateway state).

A user list (``--allow-users``, ``--deny-users``, ``--admin-users``, a kernelspec's
``metadata.raygate.allow_users`` / ``deny_users``) names users, and with a ``group:NAME``
entry every member of group ``NAME`` (groups come from JupyterHub, or the users file).
``group_caps`` gives a group's members other per-user caps
(:func:`raygate.users.caps_for` says which hold for a user in several groups).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .resources import parse_memory

GROUP_PREFIX = "group:"
"""A user list's entry ``group:physics`` stands for every member of group ``physics``."""
CAP_KEYS = ("max_kernels_per_user", "max_gpus_per_user", "max_memory_per_user")
"""The per-user caps a ``group_caps`` table may set (the settings of the same names)."""


def listed(entries: Iterable[str], username: str | None, groups: Iterable[str] = ()) -> bool:
    """Whether a user list (``--allow-users``, a kernelspec's ``allow_users``, ...) names
    ``username``, itself or by a ``group:NAME`` entry of one of their ``groups``."""
    if not username:
        return False
    mine = {GROUP_PREFIX + group for group in groups}
    return any(entry == username or entry in mine for entry in entries)


def parse_group_caps(value: Any) -> dict[str, dict[str, float]]:
    """The ``group_caps`` setting: a table per group of some of :data:`CAP_KEYS` (a TOML
    table, or the same as JSON text), e.g. ``{"physics": {"max_gpus_per_user": 4}}``;
    memory as a size (``"256Gi"``). ValueError naming what is wrong."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"group caps must be a JSON object of tables: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("group caps must be a table per group, e.g. [group_caps.physics]")
    out: dict[str, dict[str, float]] = {}
    for group, table in value.items():
        unknown = sorted(set(table) - set(CAP_KEYS)) if isinstance(table, dict) else []
        if not isinstance(table, dict) or not table or unknown:
            raise ValueError(
                f"group_caps.{group} must set some of: {', '.join(CAP_KEYS)}"
                + (f" (not {', '.join(unknown)})" if unknown else "")
            )
        caps: dict[str, float] = {}
        for key, raw in table.items():
            if key == "max_memory_per_user":
                try:
                    caps[key] = 0 if str(raw).strip() in ("", "0") else parse_memory(raw)
                except ValueError as exc:
                    raise ValueError(f"group_caps.{group}.{key}: {exc}") from None
                continue
            if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
                raise ValueError(f"group_caps.{group}.{key} must be a number, 0 or more")
            if key == "max_kernels_per_user" and raw != int(raw):
                raise ValueError(f"group_caps.{group}.{key} must be a whole number")
            caps[key] = raw
        out[str(group)] = caps
    return out
