"""The launch record (``LaunchRequest.to_record``/``from_record``): every field survives a
JSON round trip, so nothing a launcher persists is lost after a gateway restart. No gateway."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from raygate.launchers.base import (
    RECORD_VERSION,
    KernelSpecInfo,
    LaunchRequest,
)
from raygate.resources import ResourceRequest

# One value per field, each unlike the field's default: a field added to a dataclass and not
# listed here fails test_every_field_has_a_sample, one not serialized fails the round trip.
SPEC_SAMPLE: dict[str, Any] = {
    "name": "py-gpu",
    "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "env": {"SPEC_VAR": "1"},
    "display_name": "Python (GPU)",
    "language": "python",
    "interrupt_mode": "message",
    "metadata": {"raygate": {"launcher": "ray", "resources": {"gpus": 1}}, "debugger": True},
}
RESOURCES_SAMPLE: dict[str, Any] = {
    "cpus": 2.0,
    "cpus_limit": 4.0,
    "memory": 2**31,
    "memory_limit": 2**32,
    "gpus": 0.5,
    "gpus_limit": 1.0,
    "custom": {"special_hw": 1.0},
    "accelerator_type": "A100",
    "node_labels": {"zone": "a"},
    "strategy": "node",
    "node_id": "abc123",
    "soft": True,
}
REQUEST_SAMPLE: dict[str, Any] = {
    "kernel_id": "6f1c2b9e-0000-4000-8000-000000000001",
    "spec": KernelSpecInfo(**SPEC_SAMPLE),
    "env": {"KERNEL_USERNAME": "alice", "KERNEL_WORKING_DIR": "/work"},
    "launch_timeout": 42.5,
    "username": "alice",
    "cwd": "/work",
    "resources": ResourceRequest(**RESOURCES_SAMPLE),
    "encryption": "curve",
    "pooled": True,
    "account": "alice_os",
    "account_ids": (4321, 4322),
}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


@pytest.mark.parametrize(
    ("cls", "sample"),
    [
        (LaunchRequest, REQUEST_SAMPLE),
        (KernelSpecInfo, SPEC_SAMPLE),
        (ResourceRequest, RESOURCES_SAMPLE),
    ],
)
def test_every_field_has_a_sample(cls: type, sample: dict[str, Any]) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    assert sorted(names) == sorted(sample), "add the new field to this test's samples"
    for f in dataclasses.fields(cls):
        assert sample[f.name] != _default(f), f"{cls.__name__}.{f.name}: sample is the default"


def test_round_trip_keeps_every_field() -> None:
    request = LaunchRequest(**REQUEST_SAMPLE)
    record = json.loads(json.dumps(request.to_record()))  # as stored: JSON only
    assert record["version"] == RECORD_VERSION
    back = LaunchRequest.from_record(record)
    for f in dataclasses.fields(LaunchRequest):
        assert getattr(back, f.name) == getattr(request, f.name), f.name
    assert back == request
    assert isinstance(back.spec, KernelSpecInfo)
    assert isinstance(back.resources, ResourceRequest)


def test_record_is_a_copy() -> None:
    request = LaunchRequest(**REQUEST_SAMPLE)
    record = request.to_record()
    record["env"]["KERNEL_X"] = "changed"
    record["spec"]["metadata"]["raygate"]["launcher"] = "local"
    assert "KERNEL_X" not in request.env
    assert request.spec.metadata["raygate"]["launcher"] == "ray"


def test_launchers_own_keys_beside_the_record_are_ignored() -> None:
    """The Ray actor keeps ``created`` and ``keep_output_bytes`` in the same object."""
    record = {**LaunchRequest(**REQUEST_SAMPLE).to_record(), "created": "2026-01-01T00:00:00"}
    record["keep_output_bytes"] = 1024
    assert LaunchRequest.from_record(record) == LaunchRequest(**REQUEST_SAMPLE)


def test_records_from_before_the_version_field_are_read() -> None:
    """Records written before ``version`` existed (Ray actors and reattach files of running
    kernels) have the same keys and are read as version 1."""
    old = {
        "kernel_id": "k1",
        "spec": {"name": "python3", "argv": ["python"], "env": {}, "metadata": {}},
        "env": {},
        "launch_timeout": 60,
        "username": None,
        "cwd": None,
        "resources": {"gpus": 1},
        "encryption": "none",
        "pooled": False,
    }
    request = LaunchRequest.from_record(old)
    assert request.resources == ResourceRequest(gpus=1)
    assert request.launch_timeout == 60.0
    assert request.spec.interrupt_mode == "signal"


@pytest.mark.parametrize(
    "record",
    [
        {**LaunchRequest(**REQUEST_SAMPLE).to_record(), "version": RECORD_VERSION + 1},
        {"kernel_id": "k1", "env": {}, "launch_timeout": 1},  # no spec
        {"spec": {"name": "p", "argv": []}, "env": {}, "launch_timeout": 1},  # no kernel id
    ],
    ids=["newer-version", "no-spec", "no-kernel-id"],
)
def test_unreadable_records_are_refused(record: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LaunchRequest.from_record(record)
