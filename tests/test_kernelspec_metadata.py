"""``metadata.raygate`` parsed once into :class:`KernelSpecMetadata`. No gateway."""

from __future__ import annotations

from typing import Any

import pytest

from raygate.launchers.base import (
    InvalidKernelSpecMetadata,
    KernelSpecInfo,
    KernelSpecMetadata,
)


def test_every_key_read_today() -> None:
    meta = KernelSpecMetadata.parse(
        {
            "launcher": "ssh",
            "resources": {"cpus": 2, "memory": "4Gi"},
            "allow_users": "alice, bob",
            "deny_users": ["mallory"],
            "runtime_env": {"pip": ["numpy"]},
            "ssh": {"hosts": "a,b"},
            "dask": {"scheduler": "tcp://s:8786"},
            "yarn": {"queue": "gpu"},
            "kubernetes": {"image": "img:1", "namespace": "ns"},
        }
    )
    assert meta.launcher == "ssh"
    assert meta.resources == {"cpus": 2, "memory": "4Gi"}
    assert meta.allow_users == ("alice", "bob")
    assert meta.deny_users == ("mallory",)
    assert meta.runtime_env == {"pip": ["numpy"]}
    assert meta.section("ssh") == {"hosts": "a,b"}
    assert meta.section("dask") == {"scheduler": "tcp://s:8786"}
    assert meta.section("yarn") == {"queue": "gpu"}
    assert meta.section("kubernetes") == {"image": "img:1", "namespace": "ns"}
    assert meta.section("my-launcher") == {}


@pytest.mark.parametrize("raw", [None, {}, {"launcher": "", "resources": None}])
def test_absent_is_the_default(raw: Any) -> None:
    assert KernelSpecMetadata.parse(raw) == KernelSpecMetadata()


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ("ray", "", "kernelspec metadata.raygate must be an object"),
        (
            {"resources": [1]},
            "resources",
            "kernelspec metadata.raygate.resources must be an object",
        ),
        ({"resources": "2 cpus"}, "resources", "metadata.raygate.resources must be an object"),
        ({"launcher": 3}, "launcher", "metadata.raygate.launcher must be a launcher kind, not 3"),
        ({"runtime_env": "x"}, "runtime_env", "metadata.raygate.runtime_env must be an object"),
        ({"ssh": ["a"]}, "ssh", "kernelspec metadata.raygate.ssh must be an object"),
    ],
)
def test_bad_values(raw: Any, key: str, words: str) -> None:
    with pytest.raises(InvalidKernelSpecMetadata) as info:
        KernelSpecMetadata.parse(raw)
    assert words in str(info.value)
    assert info.value.key == key


def test_parsed_once_per_spec() -> None:
    spec = KernelSpecInfo("p", ["python"], metadata={"raygate": {"launcher": "local"}})
    assert spec.raygate is spec.raygate
    assert spec.raygate.launcher == "local"


def test_a_bad_spec_raises_on_each_use() -> None:
    spec = KernelSpecInfo("p", ["python"], metadata={"raygate": {"resources": 1}})
    for _ in range(2):
        with pytest.raises(InvalidKernelSpecMetadata):
            spec.raygate  # noqa: B018
