"""``raygate kernelspec create``/``list``: kernelspecs that jupyter_client loads and that a
real gateway starts with the resources they ask for."""

from __future__ import annotations

import json
import os
import sys

import pytest
from click.testing import CliRunner
from jupyter_client.kernelspec import KernelSpecManager

from raygate.cli import main
from raygate.resources import resource_request


def create(*args: str) -> object:
    return CliRunner().invoke(main, ["kernelspec", "create", *args], catch_exceptions=False)


def test_create_writes_a_kernelspec_jupyter_client_loads(tmp_path) -> None:
    runtime_env = tmp_path / "env.json"
    runtime_env.write_text(json.dumps({"env_vars": {"A": "1"}}))
    result = create(
        "--name", "py-gpu", "--display-name", "Python (GPU)", "--gpus", "1",
        "--memory", "16Gi", "--cpus", "4", "--launcher", "ray", "--resource", "special=1",
        "--accelerator-type", "A100", "--runtime-env-file", str(runtime_env),
        "--dir", str(tmp_path / "kernels"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    spec = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]).get_kernel_spec("py-gpu")
    assert spec.display_name == "Python (GPU)" and spec.language == "python"
    assert spec.argv[:3] == [sys.executable, "-m", "ipykernel_launcher"]
    raygate = spec.metadata["raygate"]
    assert raygate == {
        "launcher": "ray",
        "resources": {
            "cpus": 4,
            "memory": "16Gi",
            "gpus": 1,
            "custom": {"special": 1},
            "accelerator_type": "A100",
        },
        "runtime_env": {"env_vars": {"A": "1"}},
    }
    request = resource_request(raygate)
    assert (request.cpus, request.memory, request.gpus) == (4, 16 * 2**30, 1)
    assert request.custom == {"special": 1} and request.accelerator_type == "A100"
    assert {"logo-32x32.png", "logo-64x64.png", "logo-svg.svg"} <= set(
        os.listdir(spec.resource_dir)
    )

    listed = CliRunner().invoke(
        main, ["kernelspec", "list", "--json", "--kernelspec-dirs", str(tmp_path / "kernels")]
    )
    row = json.loads(listed.output)["py-gpu"]
    assert row["launcher"] == "ray"
    assert row["resources"] == request.describe()


def test_bad_values_are_refused_with_the_gateways_words(tmp_path) -> None:
    result = CliRunner().invoke(
        main, ["kernelspec", "create", "--name", "x", "--memory", "16Qi", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    with pytest.raises(ValueError) as parsed:
        resource_request({"resources": {"memory": "16Qi"}})
    assert str(parsed.value) in result.output
    result = CliRunner().invoke(
        main,
        ["kernelspec", "create", "--name", "x", "--gpus", "1", "--gpus-limit", "0.5",
         "--dir", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 2 and "limit" in result.output
    assert os.listdir(tmp_path) == []


def test_prefix_install_and_refusal_to_overwrite(tmp_path) -> None:
    assert create("--name", "Small", "--cpus", "0.5", "--prefix", str(tmp_path)).exit_code == 0
    path = tmp_path / "share" / "jupyter" / "kernels" / "small" / "kernel.json"
    assert json.loads(path.read_text())["metadata"]["raygate"]["resources"] == {"cpus": 0.5}
    again = CliRunner().invoke(
        main, ["kernelspec", "create", "--name", "small", "--prefix", str(tmp_path)]
    )
    assert again.exit_code != 0 and "--replace" in again.output
    assert create("--name", "small", "--prefix", str(tmp_path), "--replace").exit_code == 0
    assert json.loads(path.read_text())["metadata"] == {}


def test_created_kernelspec_starts_with_its_request(tmp_path, start_server) -> None:
    """A local kernel does not report its reservation, so the gateway's own checks are
    what shows the request was read: a cap below it refuses the start with the
    kernelspec's numbers, and the kernel runs once the request fits."""
    kernels = str(tmp_path / "kernels")
    assert create("--name", "py-big", "--launcher", "local", "--memory", "2Gi",
                  "--cpus", "2", "--dir", kernels).exit_code == 0  # fmt: skip
    server = start_server(
        "--kernelspec-dirs", kernels, "--default-launcher", "local",
        "--max-kernel-memory", "1Gi", "--max-kernel-cpus", "2",
    )  # fmt: skip
    gw = server.client
    refused = gw.post("/api/kernels", json={"name": "py-big"})
    assert refused.status_code == 400
    assert "at most 1.0 GiB memory on this gateway, not 2.0 GiB" in refused.json()["message"]
    fits = gw.post("/api/kernels", json={"name": "py-big", "env": {"KERNEL_MEMORY": "512Mi"}})
    assert fits.status_code == 201, fits.text
    kernel = gw.get(f"/api/kernels/{fits.json()['id']}").json()
    assert kernel["name"] == "py-big" and kernel["launcher"] == "local"
    gw.shutdown_kernel(kernel["id"])


def test_created_gpu_kernelspec_lands_on_the_ray_gpu_node(tmp_path, ray_cluster) -> None:
    from conftest import ServerProcess

    kernels = str(tmp_path / "kernels")
    assert create("--name", "py-gpu", "--launcher", "ray", "--gpus", "1", "--memory", "256Mi",
                  "--cpus", "0.5", "--dir", kernels).exit_code == 0  # fmt: skip
    server = ServerProcess(
        ["--ray-address", ray_cluster.address, "--ray-namespace", "rg-kernelspec-cli",
         "--kernelspec-dirs", kernels, "--discovery-interval", "0"],
        env=ray_cluster.env(),
    )  # fmt: skip
    try:
        server.wait_ready(120)
        started = server.client.post("/api/kernels", json={"name": "py-gpu"})
        assert started.status_code == 201, started.text
        placement = server.client.get(f"/api/kernels/{started.json()['id']}").json()["placement"]
        assert placement["node_id"] == ray_cluster.gpu_node_id
        assert placement["resources"]["GPU"] == 1 and len(placement["gpu_ids"]) == 1
        assert placement["resources"]["memory"] == 256 * 2**20
        assert placement["resources"]["CPU"] == 0.5
        server.client.shutdown_kernel(started.json()["id"])
    finally:
        server.stop()
