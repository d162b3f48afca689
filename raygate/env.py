"""What a start request may pass into a kernel's environment."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .errors import APIError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME = 256
MAX_VALUE = 64 * 1024
MAX_TOTAL = 1024 * 1024


def validate_env(env: Any, allowed_extra: Iterable[str] = ()) -> dict[str, str]:
    """The variables of a start request's ``env`` that reach the kernel.

    ``KERNEL_*`` variables always pass, others only when the operator allows them
    (others are ignored, as Kernel Gateway does). Anything malformed is a 400.
    """
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise APIError(400, "'env' must be a JSON object of strings")
    allowed = set(allowed_extra)
    out: dict[str, str] = {}
    total = 0
    for name, value in env.items():
        if len(name) > MAX_NAME or not _NAME.match(name):
            raise APIError(400, f"Invalid environment variable name {name[:80]!r}")
        if not isinstance(value, str):
            raise APIError(
                400, f"Environment variable {name} must be a string, not {type(value).__name__}"
            )
        if "\x00" in value:
            raise APIError(400, f"Environment variable {name} contains a NUL character")
        if len(value) > MAX_VALUE:
            raise APIError(400, f"Environment variable {name} is longer than {MAX_VALUE} bytes")
        total += len(name) + len(value)
        if total > MAX_TOTAL:
            raise APIError(400, f"'env' is larger than {MAX_TOTAL} bytes in all")
        if name.startswith("KERNEL_") or name in allowed:
            out[name] = value
    return out


def parse_timeout(value: str | None, default: float, maximum: float) -> float:
    """``KERNEL_LAUNCH_TIMEOUT`` in seconds, within the operator's maximum."""
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise APIError(
            400, f"KERNEL_LAUNCH_TIMEOUT must be a number of seconds, not {value!r}"
        ) from None
    if not 0 < seconds < float("inf"):
        raise APIError(400, f"KERNEL_LAUNCH_TIMEOUT must be positive, not {value!r}")
    return min(seconds, maximum)
