"""The Ray launcher's placement rules, without Ray running: actor options from a
resource request, feasibility against a cluster's nodes, and the wording of failures."""

from __future__ import annotations

from typing import Any

import pytest

from raygate.launchers.base import KernelSpecInfo, KernelStartError, LaunchRequest
from raygate.launchers.ray.cluster import ActorRecord
from raygate.launchers.ray.placement import (
    actor_options,
    check_feasible,
    creation_error,
    death_reason,
    fits,
    format_resources,
    labels_match,
    pack_node,
    resource_shape,
    still_waiting,
)
from raygate.resources import ResourceRequest

GiB = 2**30


def request(metadata: dict[str, Any] | None = None, **resources: Any) -> LaunchRequest:
    spec = KernelSpecInfo(
        name="python3", argv=["python", "-m", "ipykernel"], metadata=metadata or {}
    )
    return LaunchRequest(
        kernel_id="k1",
        spec=spec,
        env={},
        launch_timeout=10.0,
        resources=ResourceRequest(**resources),
    )


def node(node_id: str, alive: bool = True, labels: dict[str, str] | None = None, **res: float):
    return {
        "NodeID": node_id,
        "Alive": alive,
        "NodeManagerAddress": "10.0.0.1",
        "Resources": {f"node:{node_id}": 1.0, "object_store_memory": 1e9, **res},
        "Labels": labels or {},
    }


CPU_NODE = node("a" * 56, CPU=4.0, memory=8.0 * GiB)
GPU_NODE = node("b" * 56, labels={"zone": "b"}, CPU=8.0, GPU=2.0, memory=32.0 * GiB)


def test_options_carry_the_request() -> None:
    options = actor_options(
        request(
            cpus=2,
            memory=GiB,
            gpus=1,
            custom={"special": 1},
            accelerator_type="A100",
            node_labels={"zone": "b"},
            strategy="spread",
        ),
        "ns",
    )
    assert options == {
        "name": "k1",
        "namespace": "ns",
        "lifetime": "detached",
        "max_restarts": 0,
        "max_concurrency": 4,
        "num_cpus": 2,
        "num_gpus": 1,
        "memory": GiB,
        "resources": {"special": 1},
        "accelerator_type": "A100",
        "label_selector": {"zone": "b"},
        "scheduling_strategy": "SPREAD",
    }


def test_options_default_cpus_and_runtime_env() -> None:
    runtime_env = {"env_vars": {"A": "1"}}
    options = actor_options(request({"raygate": {"runtime_env": runtime_env}}), "ns", 0.5)
    assert options["num_cpus"] == 0.5
    assert options["num_gpus"] == 0
    assert options["runtime_env"] == runtime_env
    assert "memory" not in options and "scheduling_strategy" not in options
    # an explicit zero is not "not asked for"
    assert actor_options(request(cpus=0), "ns", 0.5)["num_cpus"] == 0


def test_node_strategy_is_node_affinity() -> None:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = actor_options(request(strategy="node", node_id="c" * 56, soft=True), "ns")[
        "scheduling_strategy"
    ]
    assert isinstance(strategy, NodeAffinitySchedulingStrategy)
    assert (strategy.node_id, strategy.soft) == ("c" * 56, True)


def test_pack_fills_the_fullest_node_with_room() -> None:
    other = node("c" * 56, CPU=4.0, memory=8.0 * GiB)
    nodes = [CPU_NODE, other, GPU_NODE]
    free = {
        CPU_NODE["NodeID"]: {"CPU": 3.0, "memory": 8.0 * GiB},
        other["NodeID"]: {"CPU": 1.0, "memory": 8.0 * GiB},
        GPU_NODE["NodeID"]: {"CPU": 0.5, "GPU": 2.0, "memory": 32.0 * GiB},
    }
    # the CPU node left with the least room; never the GPU node for a kernel without GPUs
    assert pack_node({"CPU": 1.0}, free, nodes) == other["NodeID"]
    assert pack_node({"CPU": 2.0}, free, nodes) == CPU_NODE["NodeID"]
    # ... unless it alone has room
    assert pack_node({"CPU": 0.5}, free, [GPU_NODE]) == GPU_NODE["NodeID"]
    assert pack_node({"CPU": 0.5, "GPU": 1.0}, free, nodes) == GPU_NODE["NodeID"]
    # ties: the least free memory left, then the node id
    free[other["NodeID"]] = {"CPU": 3.0, "memory": 4.0 * GiB}
    assert pack_node({"CPU": 1.0}, free, nodes) == other["NodeID"]
    free[other["NodeID"]] = dict(free[CPU_NODE["NodeID"]])
    assert pack_node({"CPU": 1.0}, free, nodes) == CPU_NODE["NodeID"]


def test_pack_leaves_it_to_ray_when_no_node_has_room_now() -> None:
    free = {CPU_NODE["NodeID"]: {"CPU": 0.5}, GPU_NODE["NodeID"]: {"CPU": 8.0, "GPU": 0.0}}
    assert pack_node({"CPU": 1.0, "GPU": 1.0}, free, [CPU_NODE, GPU_NODE]) is None
    assert pack_node({"CPU": 1.0}, {}, [CPU_NODE, GPU_NODE]) is None  # free not known
    dead = node("d" * 56, alive=False, CPU=4.0)
    assert pack_node({"CPU": 1.0}, {dead["NodeID"]: {"CPU": 4.0}}, [dead]) is None
    # labels the kernel asks for are honoured
    free = {CPU_NODE["NodeID"]: {"CPU": 1.0}, GPU_NODE["NodeID"]: {"CPU": 8.0}}
    assert pack_node({"CPU": 1.0}, free, [CPU_NODE, GPU_NODE], {"zone": "b"}) == GPU_NODE["NodeID"]
    assert pack_node({"CPU": 1.0}, free, [CPU_NODE, GPU_NODE], {"zone": "c"}) is None


def test_shape_and_its_words() -> None:
    shape = resource_shape({"num_cpus": 2, "num_gpus": 0, "memory": GiB, "accelerator_type": "T4"})
    assert shape == {"CPU": 2.0, "memory": float(GiB), "accelerator_type:T4": 0.001}
    assert format_resources({"CPU": 2.0, "memory": GiB, "node:x": 1}) == "2 CPU, 1.0 GiB memory"
    assert format_resources({}) == "nothing"


def test_fits_and_labels() -> None:
    assert fits({"CPU": 4.0}, {"CPU": 4.0})
    assert not fits({"CPU": 4.0, "GPU": 1.0}, {"CPU": 8.0})
    assert labels_match({"zone": "b"}, {"zone": "b", "x": "y"}) is True
    assert labels_match({"zone": "b"}, {"zone": "a"}) is False
    assert labels_match({"zone": "in(a,b)"}, {"zone": "a"}) is None  # left to Ray


def feasible(req: LaunchRequest, nodes: list, node_types: list | None = None) -> None:
    check_feasible(req, actor_options(req, "ns"), nodes, node_types or [])


def test_feasible_on_some_node() -> None:
    feasible(request(gpus=2), [CPU_NODE, GPU_NODE])
    feasible(request(node_labels={"zone": "b"}, cpus=8), [CPU_NODE, GPU_NODE])


def test_infeasible_names_ask_and_cluster() -> None:
    with pytest.raises(KernelStartError) as caught:
        feasible(request(gpus=4), [CPU_NODE, GPU_NODE, node("dead", alive=False, GPU=8.0)])
    assert caught.value.status == 400
    message = str(caught.value)
    assert "it asks for 1 CPU, 4 GPU" in message
    assert "node aaaaaaaa (10.0.0.1): 4 CPU, 8.0 GiB memory" in message
    assert "node bbbbbbbb (10.0.0.1): 8 CPU, 2 GPU, 32.0 GiB memory" in message
    assert "dead" not in message  # dead nodes are not the cluster's
    assert "autoscaler" not in message


def test_labels_exclude_nodes() -> None:
    with pytest.raises(KernelStartError) as caught:
        feasible(request(node_labels={"zone": "a"}), [CPU_NODE, GPU_NODE])
    assert "on nodes labelled {'zone': 'a'}" in str(caught.value)
    assert "labels zone=b" in str(caught.value)


def test_autoscaler_node_type_makes_it_wait() -> None:
    big = {"CPU": 16.0, "GPU": 8.0, "memory": 64.0 * GiB}
    feasible(request(gpus=4), [CPU_NODE], [big])
    with pytest.raises(KernelStartError) as caught:
        feasible(request(gpus=16), [CPU_NODE], [big])
    assert "(and no autoscaler node type holds it)" in str(caught.value)


def test_pinned_to_a_node() -> None:
    with pytest.raises(KernelStartError) as caught:
        feasible(request(strategy="node", node_id="e" * 56), [CPU_NODE])
    assert str(caught.value) == (
        f"the kernel asks to run on node {'e' * 56}, which is not in the cluster"
    )
    with pytest.raises(KernelStartError):  # only that node counts, and it has no GPU
        feasible(request(strategy="node", node_id=CPU_NODE["NodeID"], gpus=1), [CPU_NODE, GPU_NODE])
    # softly: any node will do
    feasible(request(strategy="node", node_id="e" * 56, soft=True, gpus=1), [CPU_NODE, GPU_NODE])


def test_no_nodes() -> None:
    with pytest.raises(KernelStartError, match="the cluster has no nodes"):
        feasible(request(), [])


def test_still_waiting_words() -> None:
    options = actor_options(request(gpus=1), "ns")
    message = still_waiting("PENDING_CREATION", options, {"a" * 56: {"CPU": 1.0}}, 9)
    assert message == (
        "gave up after waiting 9s for capacity: the kernel asks for 1 CPU, 1 GPU and no node "
        "has that free (free now: node aaaaaaaa: 1 CPU); its actor was removed"
    )
    assert "(free now" not in still_waiting("", options, None, 9)
    assert "; 3 kernel starts were waiting for that, this one included; its actor" in (
        still_waiting("PENDING_CREATION", options, None, 9, waiting=3)
    )
    # room on a node, but no actor yet: the wait was for a worker process, not capacity
    message = still_waiting("PENDING_CREATION", options, {"b" * 56: {"CPU": 4.0, "GPU": 1.0}}, 9, 5)
    assert message.startswith(
        "gave up after waiting 9s for Ray to start the kernel's worker process: the kernel "
        "asks for 1 CPU, 1 GPU, which the cluster has free (free now: node bbbbbbbb: 4 CPU, "
        "1 GPU), but a node starts only a few worker processes at a time; 5 kernel starts "
        "were waiting for a worker, this one included; its actor was removed."
    ), message
    assert still_waiting("ALIVE", options, {}, 9) == (
        "the kernel's actor did not start within 9s (state ALIVE); removed"
    )


@pytest.mark.parametrize(
    ("record", "words"),
    [
        (None, ""),
        (ActorRecord(""), "its actor is gone"),
        (ActorRecord("ALIVE"), "its actor is alive"),
        (
            ActorRecord("DEAD", "node_death_context", "The node died."),
            "the node it ran on died: The node died.",
        ),
        (
            ActorRecord("DEAD", "actor_died_error_context", "killed by ray.kill()"),
            "its actor was killed (the kernel was shut down, perhaps by another gateway)",
        ),
        (
            ActorRecord("DEAD", "oom_context", ""),
            "its actor was killed for lack of memory",
        ),
        (
            ActorRecord("DEAD", "actor_died_error_context", "exited\nmore"),
            "its actor died: exited",
        ),
    ],
)
def test_death_reason(record: ActorRecord | None, words: str) -> None:
    assert death_reason(record) == words


def test_creation_error_keeps_the_constructor_message() -> None:
    text = "ActorDiedError: ...\n  raise KernelStartError: no such directory /x\ntrace"
    assert creation_error(text) == "no such directory /x"
    assert creation_error("boom\nlast line\n") == ("the kernel's actor failed to start: last line")
    assert creation_error("", "RayActorError").endswith(": RayActorError")
