"""The Ray launcher as a jupyter_client kernel provisioner, used by nbclient and
KernelManager on their own (no gateway), against the session's real Ray cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from kernelspecs import ipykernel_argv, write_kernelspec

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    out = {}
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import os; x = 5; print(os.environ['CUDA_VISIBLE_DEVICES'])"),
        nbformat.v4.new_code_cell("print(x * 2, os.environ['KERNEL_ID'] != '')"),
    ]
    NotebookClient(nb, kernel_name="ray-gpu", timeout=120).execute()
    out["nb"] = [c.outputs[0]["text"] for c in nb.cells]

    async def manage():
        km = AsyncKernelManager(kernel_name="ray-gpu")
        await km.start_kernel()
        out["provisioner"] = type(km.provisioner).__name__
        kc = km.client(); kc.start_channels(); await kc.wait_for_ready(timeout=60)
        await kc.execute_interactive("y = 1", timeout=30)
        await km.restart_kernel()
        await kc.wait_for_ready(timeout=60)
        texts = []
        reply = await kc.execute_interactive(
            "print('y' in dir())", timeout=30,
            output_hook=lambda m: texts.append(m["content"].get("text", "")))
        out["after_restart"] = "".join(texts).strip()
        kc.stop_channels()
        await km.shutdown_kernel()
    asyncio.run(manage())
    print("RESULT " + json.dumps(out))
    """
)


# A kernel that outlives its shutdown_request by 8 s: jupyter_client then sends a SIGTERM
# through the provisioner without saying that a restart follows (it waits 5 s here), and
# restarts the kernel on the same provisioner all the same.
SLOW_TO_EXIT = [
    sys.executable,
    "-c",
    "import atexit, time; atexit.register(time.sleep, 8)\n"
    "from ipykernel.kernelapp import launch_new_instance; launch_new_instance()",
    "-f",
    "{connection_file}",
]


@pytest.mark.parametrize("argv", [ipykernel_argv(), SLOW_TO_EXIT], ids=["prompt", "slow-to-exit"])
def test_nbclient_and_kernel_manager_run_ray_kernels(ray_cluster, tmp_path, argv) -> None:
    namespace = f"rg-prov-{uuid.uuid4().hex[:8]}"
    kernels = tmp_path / "kernels"
    write_kernelspec(
        str(kernels),
        "ray-gpu",
        argv,
        metadata={
            "kernel_provisioner": {
                "provisioner_name": "raygate-ray-provisioner",
                "config": {"address": ray_cluster.address, "namespace": namespace},
            },
            "raygate": {"resources": {"gpus": 1, "cpus": 0.5}},
        },
    )
    env = {**os.environ, **ray_cluster.env(), "JUPYTER_PATH": str(tmp_path)}
    env.pop("RAY_AUTH_MODE", None)  # the provisioner turns token mode on by itself
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    out = json.loads(lines[-1][len("RESULT ") :])
    gpu_ids = out["nb"][0].strip()
    assert gpu_ids in ("0", "1"), out
    assert out["nb"][1].strip() == "10 True"
    assert out["provisioner"] == "RayKernelProvisioner"
    assert out["after_restart"] == "False"
    assert ray_cluster.wait_actors(namespace, set(), timeout=15) == {}
