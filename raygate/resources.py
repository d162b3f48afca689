"""The resource request of one kernel, the same for every launcher.

A kernel's request comes from its kernelspec (``metadata.raygate.resources``) and may be
raised or narrowed per start request by the ``KERNEL_*`` variables Enterprise Gateway
users already send, within caps the operator sets:

=============================  ====================================  =========================
start-request variable         kernelspec ``metadata.raygate.        meaning
                               resources`` key
=============================  ====================================  =========================
``KERNEL_CPUS``                ``cpus``                              CPUs to reserve
``KERNEL_CPUS_LIMIT``          ``cpus_limit``                        CPUs it may use at most
``KERNEL_MEMORY``              ``memory`` (``4Gi``, ``512M``, bytes) memory to reserve
``KERNEL_MEMORY_LIMIT``        ``memory_limit``                      memory it may use at most
``KERNEL_GPUS``                ``gpus`` (fractions allowed)          GPUs to reserve
``KERNEL_GPUS_LIMIT``          ``gpus_limit``                        GPUs it may use at most
``KERNEL_RESOURCES``           ``custom``                            other named resources,
                                                                     JSON or ``a=1,b=0.5``
``KERNEL_ACCELERATOR_TYPE``    ``accelerator_type``                  e.g. ``A100``, ``H100``
``KERNEL_NODE_LABELS``         ``node_labels``                       node labels required,
                                                                     JSON or ``k=v,k2=v2``
``KERNEL_SCHEDULING_STRATEGY`` ``scheduling_strategy``               ``pack`` | ``spread`` |
                                                                     ``node:<id>[:soft]``
=============================  ====================================  =========================

Each launcher maps this model onto its own terms (Ray actor options, Dask worker
resources, pod requests and limits, YARN container size); a launcher that cannot honour a
field says so when the kernel starts.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = [
    "InvalidResourceRequest",
    "ResourceCaps",
    "ResourceRequest",
    "format_bytes",
    "parse_memory",
    "request_for",
    "resource_request",
    "with_default_limits",
]

STRATEGIES = ("default", "pack", "spread", "node")


class InvalidResourceRequest(ValueError):
    """A resource request that is malformed or exceeds what the operator allows (HTTP 400)."""


@dataclass(frozen=True)
class ResourceRequest:
    """What one kernel asks for. ``None`` means "not asked for" (the launcher's default)."""

    cpus: float | None = None
    cpus_limit: float | None = None
    memory: int | None = None
    """Bytes."""
    memory_limit: int | None = None
    gpus: float = 0.0
    gpus_limit: float | None = None
    custom: dict[str, float] = field(default_factory=dict)
    """Named resources beyond CPUs, memory and GPUs (``{"special_hw": 1}``)."""
    accelerator_type: str | None = None
    node_labels: dict[str, str] = field(default_factory=dict)
    """Labels a node must carry to hold the kernel."""
    strategy: str = "default"
    """``default`` (the scheduler's choice), ``pack``, ``spread`` or ``node``."""
    node_id: str | None = None
    """With ``strategy="node"``: the node to run on."""
    soft: bool = False
    """With ``strategy="node"``: another node will do when that one cannot hold the kernel."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ResourceRequest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def describe(self) -> str:
        """The request in words, for error messages: ``2 CPUs, 4.0 GiB memory, 1 GPU``."""
        parts = []
        if self.cpus is not None:
            parts.append(f"{self.cpus:g} CPU" + ("" if self.cpus == 1 else "s"))
        if self.memory is not None:
            parts.append(f"{format_bytes(self.memory)} memory")
        if self.gpus:
            parts.append(f"{self.gpus:g} GPU" + ("" if self.gpus == 1 else "s"))
        parts += [f"{amount:g} {name}" for name, amount in sorted(self.custom.items())]
        if self.accelerator_type:
            parts.append(f"accelerator type {self.accelerator_type}")
        if self.node_labels:
            labels = ",".join(f"{k}={v}" for k, v in sorted(self.node_labels.items()))
            parts.append(f"node labels {labels}")
        if self.strategy == "node":
            parts.append(f"node {self.node_id}" + (" (soft)" if self.soft else ""))
        return ", ".join(parts) or "no resources"


@dataclass(frozen=True)
class ResourceCaps:
    """The most one kernel may ask for; ``None``: no cap."""

    cpus: float | None = None
    memory: int | None = None
    gpus: float | None = None


# -- parsing -----------------------------------------------------------------------------

_MEMORY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}


def parse_memory(value: Any, what: str = "memory") -> int:
    """Bytes from ``4Gi``, ``512M``, ``1.5G``, ``1073741824`` or a number."""
    if isinstance(value, bool):
        raise InvalidResourceRequest(f"{what} must be a size like 4Gi, 512M or bytes")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = _MEMORY.match(str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise InvalidResourceRequest(
                f"{what} must be a size like 4Gi, 512M or a number of bytes, not {value!r}"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    amount = number * _UNITS[unit]
    if not math.isfinite(amount) or amount <= 0:
        raise InvalidResourceRequest(f"{what} must be positive, not {value!r}")
    return int(amount)


def format_bytes(amount: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if amount >= size:
            return f"{amount / size:.1f} {unit}"
    return f"{amount:g} bytes"


def _amount(value: Any, what: str, allow_zero: bool = True) -> float:
    if isinstance(value, bool):
        raise InvalidResourceRequest(f"{what} must be a number, not {value!r}")
    try:
        amount = float(value)
    except (TypeError, ValueError):
        raise InvalidResourceRequest(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(amount) or amount < 0 or (amount == 0 and not allow_zero):
        raise InvalidResourceRequest(f"{what} must be a positive number, not {value!r}")
    return amount


def _mapping(value: Any, what: str) -> dict[str, str]:
    """A mapping from a dict, a JSON object or ``k=v,k2=v2``."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    text = str(value).strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidResourceRequest(f"{what}: malformed JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidResourceRequest(f"{what} must be a JSON object")
        return {str(k): str(v) for k, v in data.items()}
    out = {}
    for item in text.split(","):
        name, sep, val = item.partition("=")
        if not sep or not name.strip():
            raise InvalidResourceRequest(f"{what} must look like name=value,name2=value2")
        out[name.strip()] = val.strip()
    return out


def _strategy(value: Any) -> tuple[str, str | None, bool]:
    text = str(value).strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower() or "default"
    if kind not in STRATEGIES:
        raise InvalidResourceRequest(
            f"scheduling strategy must be pack, spread or node:<node-id>[:soft], not {text!r}"
        )
    if kind != "node":
        if rest:
            raise InvalidResourceRequest(f"scheduling strategy {kind} takes no argument")
        return kind, None, False
    node_id, _, soft = rest.partition(":")
    if not node_id or soft not in ("", "soft"):
        raise InvalidResourceRequest(
            f"scheduling strategy must be node:<node-id> or node:<node-id>:soft, not {text!r}"
        )
    return kind, node_id, soft == "soft"


_ENV = {
    "cpus": "KERNEL_CPUS",
    "cpus_limit": "KERNEL_CPUS_LIMIT",
    "memory": "KERNEL_MEMORY",
    "memory_limit": "KERNEL_MEMORY_LIMIT",
    "gpus": "KERNEL_GPUS",
    "gpus_limit": "KERNEL_GPUS_LIMIT",
    "custom": "KERNEL_RESOURCES",
    "accelerator_type": "KERNEL_ACCELERATOR_TYPE",
    "node_labels": "KERNEL_NODE_LABELS",
    "scheduling_strategy": "KERNEL_SCHEDULING_STRATEGY",
}


def resource_request(
    metadata: dict[str, Any] | None,
    env: dict[str, str] | None = None,
    caps: ResourceCaps | None = None,
) -> ResourceRequest:
    """The request for a kernel of a kernelspec with ``metadata`` (its ``metadata.raygate``),
    as the start request's ``env`` adjusts it, checked against the operator's ``caps``.

    Raises :class:`InvalidResourceRequest` with a message for the user.
    """
    base = (metadata or {}).get("resources") or {}
    if not isinstance(base, dict):
        raise InvalidResourceRequest("kernelspec metadata.raygate.resources must be an object")
    return request_for(base, env, caps)


def request_for(
    base: dict[str, Any], env: dict[str, str] | None = None, caps: ResourceCaps | None = None
) -> ResourceRequest:
    """Like :func:`resource_request`, from the kernelspec's ``resources`` object itself
    (:attr:`KernelSpecMetadata.resources`); called by admission."""
    raw: dict[str, tuple[Any, str]] = {}
    for key, var in _ENV.items():
        spec_key = "resources" if key == "custom" and "resources" in base else key
        if spec_key in base and base[spec_key] is not None:
            raw[key] = (base[spec_key], f"kernelspec resources.{spec_key}")
        if env and env.get(var, "").strip():
            raw[key] = (env[var], var)

    values: dict[str, Any] = {}
    for key in ("cpus", "cpus_limit", "gpus", "gpus_limit"):
        if key in raw:
            value, what = raw[key]
            values[key] = _amount(value, what, allow_zero=key == "gpus")
    for key in ("memory", "memory_limit"):
        if key in raw:
            value, what = raw[key]
            values[key] = parse_memory(value, what)
    if "custom" in raw:
        value, what = raw["custom"]
        custom = {}
        for name, amount in _mapping(value, what).items():
            if name in ("CPU", "GPU", "memory"):
                raise InvalidResourceRequest(
                    f"{what}: ask for {name} with KERNEL_{name.upper()}S, not as a custom resource"
                )
            custom[name] = _amount(amount, f"{what} {name}", allow_zero=False)
        values["custom"] = custom
    if "accelerator_type" in raw:
        values["accelerator_type"] = str(raw["accelerator_type"][0]).strip() or None
    if "node_labels" in raw:
        value, what = raw["node_labels"]
        values["node_labels"] = _mapping(value, what)
    if "scheduling_strategy" in raw:
        strategy, node_id, soft = _strategy(raw["scheduling_strategy"][0])
        values.update(strategy=strategy, node_id=node_id, soft=soft)
    request = ResourceRequest(**values)
    _check_limits(request)
    _check_caps(request, caps or ResourceCaps())
    return request


def _check_limits(request: ResourceRequest) -> None:
    for name, amount, limit in (
        ("CPUs", request.cpus, request.cpus_limit),
        ("GPUs", request.gpus, request.gpus_limit),
        ("memory", request.memory, request.memory_limit),
    ):
        if amount is not None and limit is not None and limit < amount:
            raise InvalidResourceRequest(
                f"the {name} limit ({limit:g}) is below the {name} requested ({amount:g})"
            )


def _check_caps(request: ResourceRequest, caps: ResourceCaps) -> None:
    checks = (
        ("KERNEL_CPUS", "CPUs", caps.cpus, (request.cpus, request.cpus_limit), "g"),
        ("KERNEL_GPUS", "GPUs", caps.gpus, (request.gpus, request.gpus_limit), "g"),
        ("KERNEL_MEMORY", "memory", caps.memory, (request.memory, request.memory_limit), "b"),
    )
    for var, name, cap, amounts, fmt in checks:
        if cap is None:
            continue
        for amount in amounts:
            if amount is not None and amount > cap:
                shown = format_bytes if fmt == "b" else (lambda x: f"{x:g}")
                raise InvalidResourceRequest(
                    f"{var}: a kernel may ask for at most {shown(cap)} {name} on this gateway, "
                    f"not {shown(amount)}"
                )


def with_default_limits(
    request: ResourceRequest, memory_limit: int | None = None, cpus_limit: float | None = None
) -> ResourceRequest:
    """The request with the operator's default limits (``--kernel-memory-limit-default``,
    ``--kernel-cpus-limit-default``) where neither the start request nor the kernelspec
    set one; never below what the request reserves. Called by admission
    (``Admission.resources``, for starts and the warm pool); the kernel's supervisor
    enforces the result."""
    changes: dict[str, Any] = {}
    if memory_limit and request.memory_limit is None:
        changes["memory_limit"] = max(memory_limit, request.memory or 0)
    if cpus_limit and request.cpus_limit is None:
        changes["cpus_limit"] = max(cpus_limit, request.cpus or 0.0)
    return replace(request, **changes) if changes else request
