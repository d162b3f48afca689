"""The yarn launcher's pure parts (launchers/yarn/spec.py): the container size of a request,
the service definition, the scheduler's queues and their limits. No gateway, no RM."""

from __future__ import annotations

import base64
import json

import pytest

from raygate.launchers.base import KernelSpecInfo, LaunchRequest
from raygate.launchers.yarn.spec import (
    ContainerSize,
    QueueLimits,
    container_size,
    encode_settings,
    kernel_container,
    kernel_id_of,
    leaf_queues,
    over_queue_maximum,
    service_definition,
    service_name,
)
from raygate.resources import ResourceRequest


def request(**resources: float) -> LaunchRequest:
    spec = KernelSpecInfo(name="k", argv=["python"], env={}, metadata={})
    return LaunchRequest(
        kernel_id="00000000-0000-0000-0000-000000000001",
        spec=spec,
        env={},
        launch_timeout=10.0,
        resources=ResourceRequest(**resources),  # type: ignore[arg-type]
    )


def test_container_size_rounds_up_to_what_yarn_counts() -> None:
    assert container_size(request()) == ContainerSize(1024, 1, 0)
    size = container_size(request(memory=int(1.5 * 2**30) + 1, cpus=0.5, gpus=1))
    assert size == ContainerSize(1537, 1, 1)


def test_service_names_keep_the_services_api_rule() -> None:
    kernel_id = "0F1E2D3C-aaaa-bbbb-cccc-000000000001"
    name = service_name(kernel_id)
    assert name == "raygate-0f1e2d3c-aaaa-bbbb-cccc-000000000001" and len(name) <= 63
    assert kernel_id_of(name) == kernel_id.lower() and kernel_id_of("other") is None
    with pytest.raises(ValueError):
        service_name("x" * 60)


def test_service_definition_is_one_never_restarted_container() -> None:
    settings = encode_settings({"a": 'quote " and $dollar'})
    assert json.loads(base64.b64decode(settings.removeprefix("base64:"))) == {
        "a": 'quote " and $dollar'
    }
    spec = service_definition(
        "raygate-x", "q", "py -m b", {"K": settings}, ContainerSize(2048, 2, 1), "d"
    )
    assert spec["name"] == "raygate-x" and spec["version"] and spec["queue"] == "q"
    (comp,) = spec["components"]
    assert comp["number_of_containers"] == 1 and comp["restart_policy"] == "NEVER"
    assert comp["resource"] == {
        "cpus": 2,
        "memory": "2048",
        "additional": {"yarn.io/gpu": {"value": 1, "unit": ""}},
    }
    assert comp["configuration"]["env"] == {"K": settings}
    plain = service_definition("n", "q", "c", {}, ContainerSize(512, 1, 0), "d")
    assert "additional" not in plain["components"][0]["resource"]


def gpu_info(memory: int, vcores: int, gpus: int) -> dict:
    infos = [{"name": "memory-mb", "value": memory}, {"name": "yarn.io/gpu", "value": gpus}]
    return {
        "memory": memory,
        "vCores": vcores,
        "resourceInformations": {"resourceInformation": infos},
    }


def test_leaf_queues_of_a_capacity_scheduler() -> None:
    answer = {
        "scheduler": {
            "schedulerInfo": {
                "type": "capacityScheduler",
                "queueName": "root",
                "queues": {
                    "queue": [
                        {
                            "queueName": "default",
                            "queuePath": "root.default",
                            "maximumAllocation": gpu_info(8192, 8, 2),
                        },
                        {
                            "queueName": "eng",
                            "queuePath": "root.eng",
                            "queues": {
                                "queue": {
                                    "queueName": "ml",
                                    "queuePath": "root.eng.ml",
                                    "maximumAllocation": {"memory": 4096, "vCores": 4},
                                }
                            },
                        },
                    ]
                },
            }
        }
    }
    queues = leaf_queues(answer)
    assert queues is not None and set(queues) == {"default", "root.default", "ml", "root.eng.ml"}
    assert queues["default"] == QueueLimits("default", 8192, 8, 2)
    assert queues["ml"] == QueueLimits("ml", 4096, 4, None)
    assert leaf_queues({"scheduler": {"schedulerInfo": {"type": "fairScheduler"}}}) is None


def test_over_queue_maximum_says_what_does_not_fit() -> None:
    limits = QueueLimits("q", 4096, 4, 1)
    assert over_queue_maximum(ContainerSize(4096, 4, 1), limits) is None
    assert over_queue_maximum(ContainerSize(8192, 8, 2), limits) == (
        "memory=8192MB over its 4096MB; vCores=8 over its 4; yarn.io/gpu=2 over its 1"
    )
    assert over_queue_maximum(ContainerSize(1, 1, 1), QueueLimits("q", None, None, None))


def test_kernel_container_of_a_service() -> None:
    assert kernel_container({"state": "ACCEPTED"}) is None
    service = {"components": [{"name": "kernel", "containers": [{"id": "c1", "bare_host": "n1"}]}]}
    assert kernel_container(service) == {"id": "c1", "bare_host": "n1"}
