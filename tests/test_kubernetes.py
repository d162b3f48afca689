"""The kubernetes launcher against a stand-in Kubernetes API server (tests/standins).

No real API server can run here, so ``standins/kube_apiserver.py`` serves the pods and
secrets API to the official ``kubernetes`` client over HTTP with a bearer token, and
"runs" each scheduled pod's container command as a local process: the gateway really
creates a pod through the client, the stand-in starts the bootstrap from the pod spec
(secret from the kernel's Secret), the bootstrap reports, and the kernel executes code.
The stand-in's node has 4 CPUs, 8Gi and one ``nvidia.com/gpu``; its namespaces have the
service accounts ``default`` and ``kernels``, and it runs each pod's command as the pod's
``runAsUser``/``runAsGroup`` with only the pod's environment, as a kubelet would.

This machine's Python lives under ``/root`` (mode 0700), so the pods that run the bootstrap
run as root here (their template says so); the pods that show the uid switch run ``/bin/sh``
as the ``nobody`` account (65534).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

import standins
from conftest import (
    ServerProcess,
    assert_interrupts,
    free_port,
    remote_pids,
    stop_process,
    wait_gone,
)
from kernelspecs import ipykernel_argv, write_kernelspec
from kgclient import Gateway

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOKEN = "standin-bearer-token"
NAMESPACE = "kernels"
UNPULLABLE = "registry.example/missing:1"
NOBODY = 65534
ALLOW = [
    "--k8s-allowed-service-accounts",
    "kernels,ghost",  # ghost: allowed here, but no such account in the cluster
    "--k8s-allowed-images",
    "registry.example/*",
    "--k8s-allowed-uids",
    str(NOBODY),
    "--k8s-allowed-gids",
    str(NOBODY),
    "--k8s-allowed-claims",
    "claim-{username}",
]


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The stand-in API server, a kubeconfig for it and a client of the tests' own."""
    root = tmp_path_factory.mktemp("kube")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--token", TOKEN, "--namespaces", f"{NAMESPACE},team-a", "--gpus", "1"]
    args += ["--unpullable-image", UNPULLABLE, "--service-account", "kernels"]
    log_path = str(root / "apiserver.log")
    proc = standins.start("kube_apiserver", port, args, log_path, "/api")
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "standin", "cluster": {"server": url}}],
                "users": [{"name": "raygate", "user": {"token": TOKEN}}],
                "contexts": [
                    {
                        "name": "standin",
                        "context": {
                            "cluster": "standin",
                            "user": "raygate",
                            "namespace": NAMESPACE,
                        },
                    }
                ],
                "current-context": "standin",
            }
        )
    )
    # Imported here, not by every pytest process that collects this module: with
    # kubernetes_validate installed (test_deploy's), kubernetes imports jsonschema, 4 s.
    import kubernetes

    api = kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    )
    yield {"url": url, "kubeconfig": str(kubeconfig), "api": api, "root": root}
    stop_process(proc, log_path=log_path)


@pytest.fixture(scope="module")
def k8s_files(kube: dict[str, Any]) -> dict[str, str]:
    """The shipped pod template, made to run the bootstrap with this Python; kernelspecs."""
    root = kube["root"]
    with open(os.path.join(ROOT, "k8s", "kernel-pod.yaml")) as f:
        template = yaml.safe_load(f)
    container = template["spec"]["containers"][0]
    container["command"] = [sys.executable, "-m", "raygate.launchers.kernelside.bootstrap"]
    container.pop("workingDir")
    # this machine's Python is readable by root only (see the module docstring)
    root_template = copy.deepcopy(template)
    root_template["spec"]["securityContext"] = {"runAsNonRoot": False, "runAsUser": 0}
    (root / "pod.yaml").write_text(yaml.safe_dump(root_template))
    # the shipped template's runAsNonRoot, with no uid: the kubelet refuses to start it
    no_uid = copy.deepcopy(template)
    del no_uid["spec"]["securityContext"]["runAsUser"]
    (root / "no-uid.yaml").write_text(yaml.safe_dump(no_uid))
    # a container that shows whom it runs as and what it was given, then ends
    show = copy.deepcopy(template)
    show["spec"]["containers"][0]["command"] = [
        "/bin/sh",
        "-c",
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G) env=$(env | cut -d= -f1 | sort "
        "| tr '\\n' ,); exit 3",
    ]
    (root / "show-user.yaml").write_text(yaml.safe_dump(show))
    (root / "no-containers.yaml").write_text("apiVersion: v1\nkind: Pod\nspec:\n  containers: []\n")
    specs = str(root / "kernelspecs")
    write_kernelspec(
        specs, "k8s-python", ipykernel_argv(), metadata={"raygate": {"launcher": "kubernetes"}}
    )
    meta = {
        "launcher": "kubernetes",
        "kubernetes": {"pod_template": str(root / "no-containers.yaml")},
    }
    write_kernelspec(specs, "k8s-broken-template", ipykernel_argv(), metadata={"raygate": meta})
    for name, template_file in (("k8s-no-uid", "no-uid.yaml"), ("k8s-show-user", "show-user.yaml")):
        meta = {"launcher": "kubernetes", "kubernetes": {"pod_template": str(root / template_file)}}
        write_kernelspec(specs, name, ipykernel_argv(), metadata={"raygate": meta})
    return {"template": str(root / "pod.yaml"), "specs": specs, "root": str(root)}


def gateway_args(kube: dict[str, Any], files: dict[str, str], scan: str = "1") -> list[str]:
    return [
        "--kernelspec-dirs",
        files["specs"],
        "--k8s-kubeconfig",
        kube["kubeconfig"],
        "--k8s-pod-template",
        files["template"],
        "--k8s-kernel-namespaces",
        "team-a",
        "--k8s-scan-interval",
        scan,
        "--report-ip",
        "127.0.0.1",
        "--report-address",
        "127.0.0.1",
        "--state-dir",
        os.path.join(files["root"], "unused-state"),
        "--default-launcher",
        "local",
        *ALLOW,
    ]


@pytest.fixture(scope="module")
def k8s_server(kube: dict[str, Any], k8s_files: dict[str, str]) -> Iterator[ServerProcess]:
    """One gateway for the tests that do not stop theirs; it does not sweep (the restart
    test checks the sweeps of its own gateways)."""
    server = ServerProcess(gateway_args(kube, k8s_files, scan="3600"))
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def k8s_gateway(k8s_server: ServerProcess) -> Iterator[ServerProcess]:
    yield k8s_server
    for k in k8s_server.client.get("/api/kernels").json():
        k8s_server.client.shutdown_kernel(k["id"])


def pod_of(kube: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    api = kube["api"]
    placement = model["placement"]
    pod = api.read_namespaced_pod(placement["pod"], placement["namespace"])
    return api.api_client.sanitize_for_serialization(pod)


def gone(kube: dict[str, Any], namespace: str, name: str, timeout: float = 15) -> bool:
    """Whether the pod and the secret ``name`` are deleted within ``timeout``."""
    from kubernetes.client.rest import ApiException

    api = kube["api"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = 0
        for read in (api.read_namespaced_pod, api.read_namespaced_secret):
            try:
                read(name, namespace)
                left += 1
            except ApiException as exc:
                assert exc.status == 404
        if not left:
            return True
        time.sleep(0.2)
    return False


def kernel_pods(kube: dict[str, Any]) -> list[str]:
    items = kube["api"].list_pod_for_all_namespaces(label_selector="raygate.io/kernel-id").items
    return [p.metadata.name for p in items]


def fails_fast(gw: Gateway, env: dict[str, str], status: int, name: str = "k8s-python") -> str:
    """Start a kernel that must fail with ``status`` well within its launch timeout (30 s);
    return the message."""
    started = time.monotonic()
    env = {"KERNEL_LAUNCH_TIMEOUT": "30", **env}
    r = gw.post("/api/kernels", json={"name": name, "env": env})
    assert r.status_code == status, r.text
    assert time.monotonic() - started < 5
    return r.json()["message"]


async def test_pod_kernel_start_execute_interrupt_restart_shutdown(
    k8s_gateway: ServerProcess, kube: dict[str, Any], tmp_path: Any
) -> None:
    gw = k8s_gateway.client
    env = {
        "KERNEL_CPUS": "0.5",
        "KERNEL_MEMORY": "256Mi",
        "KERNEL_MEMORY_LIMIT": "1Gi",
        "KERNEL_GPUS": "1",
        "KERNEL_SERVICE_ACCOUNT_NAME": "kernels",
        "KERNEL_WORKING_DIR": str(tmp_path),
        "KERNEL_VOLUMES": json.dumps([{"name": "data", "emptyDir": {}}]),
        "KERNEL_VOLUME_MOUNTS": json.dumps([{"name": "data", "mountPath": "/data"}]),
        "KERNEL_USERNAME": "alice",
    }
    model = gw.start_kernel("k8s-python", env=env)
    kernel_id = model["id"]
    placement = model["placement"]
    assert model["launcher"] == "kubernetes"
    assert placement["namespace"] == NAMESPACE
    assert placement["pod"] == f"raygate-kernel-{kernel_id}"
    assert placement["node"] == "standin-node"

    # what the stand-in API server was asked to run
    pod = pod_of(kube, model)
    labels = pod["metadata"]["labels"]
    assert labels["raygate.io/kernel-id"] == kernel_id
    assert labels["app.kubernetes.io/managed-by"] == "raygate"
    assert labels["raygate.io/username"] == "alice"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "kernels"
    assert {"name": "data", "emptyDir": {}} in spec["volumes"]
    container = spec["containers"][0]
    assert container["resources"]["requests"] == {
        "cpu": "500m",
        "memory": str(256 * 2**20),
        "nvidia.com/gpu": "1",
    }
    assert container["resources"]["limits"] == {"memory": str(2**30), "nvidia.com/gpu": "1"}
    assert container["workingDir"] == str(tmp_path)
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    env_vars = {v["name"]: v for v in container["env"]}
    settings = json.loads(env_vars["RAYGATE_BOOTSTRAP_SETTINGS"]["value"])
    assert "secret" not in settings and settings["kernel_id"] == kernel_id
    assert env_vars["RAYGATE_KERNEL_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": placement["pod"],
        "key": "secret",
    }
    # the kernel's secret lives in its own Secret, owned by the pod, never in the spec
    secret = kube["api"].read_namespaced_secret(placement["pod"], NAMESPACE)
    secret_text = base64.b64decode(secret.data["secret"]).decode()
    assert secret_text not in json.dumps(pod)
    assert secret.metadata.owner_references[0].uid == pod["metadata"]["uid"]
    assert "record" in secret.data

    out = await gw.run(
        kernel_id,
        "import os; print(os.getcwd(), os.environ['KERNEL_GPUS'], "
        "'RAYGATE_KERNEL_SECRET' in os.environ, 'PYTEST_CURRENT_TEST' in os.environ)",
    )
    # the pod's environment only: nothing of the test run's (or the stand-in's)
    assert out.stdout == f"{tmp_path} 1 False False\n"

    # the one GPU is held: a second GPU kernel cannot be scheduled now (503), one asking for
    # more than the node has never can (400); both fail at once with the scheduler's words
    for gpus, status, words in (("1", 503, "No preemption victims"), ("2", 400, "not helpful")):
        text = fails_fast(gw, {"KERNEL_GPUS": gpus}, status)
        assert "Unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu." in text
        assert words in text and f"{gpus} GPU" in text
    assert kernel_pods(kube) == [placement["pod"]]  # the failed ones were deleted

    assert (await gw.run(kernel_id, "x = 1")).status == "ok"
    await assert_interrupts(gw, kernel_id)

    r = gw.post(f"/api/kernels/{kernel_id}/restart")
    assert r.status_code == 200, r.text
    assert wait_gone([placement["pid"]]) == []
    out = await gw.run(kernel_id, "x")
    assert out.error and out.error["ename"] == "NameError"  # a fresh kernel, same pod
    model = gw.get(f"/api/kernels/{kernel_id}").json()
    assert model["placement"]["pod"] == placement["pod"]

    assert gw.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert gone(kube, NAMESPACE, placement["pod"])
    assert wait_gone(remote_pids(model)) == []


async def test_image_pull_errors_fail_fast_with_the_kubelets_reason(
    k8s_gateway: ServerProcess, kube: dict[str, Any]
) -> None:
    gw = k8s_gateway.client
    for image, reason in (
        (UNPULLABLE, "ErrImagePull"),
        ("registry.example/Not An Image", "InvalidImageName"),
    ):
        text = fails_fast(gw, {"KERNEL_IMAGE": image}, 500)
        assert reason in text and image in text, text
    assert kernel_pods(kube) == []


def test_bad_pod_templates_are_refused_before_anything_is_created(
    k8s_gateway: ServerProcess, kube: dict[str, Any], k8s_files: dict[str, str], refused_serve
) -> None:
    root = k8s_files["root"]
    bad = {
        "invalid.yaml": ("kind: Pod\nspec: [unclosed\n", "not valid YAML"),
        "service.yaml": (
            "apiVersion: v1\nkind: Service\nspec: {}\n",
            "must be a v1 Pod, not v1/Service",
        ),
    }
    for name, (text, words) in bad.items():
        path = os.path.join(root, name)
        with open(path, "w") as f:
            f.write(text)
        args = gateway_args(kube, k8s_files)
        args[args.index("--k8s-pod-template") + 1] = path
        result = refused_serve(*args)
        assert result.exit_code == 2, result.output
        assert f"pod template {path}: {words}" in result.stderr

    # a kernelspec's own template is checked when a kernel of it starts
    r = k8s_gateway.client.post("/api/kernels", json={"name": "k8s-broken-template"})
    assert r.status_code == 500, r.text
    assert "spec.containers must list the kernel container" in r.json()["message"]
    r = k8s_gateway.client.post(
        "/api/kernels", json={"name": "k8s-python", "env": {"KERNEL_NAMESPACE": "elsewhere"}}
    )
    assert r.status_code == 400 and "KERNEL_NAMESPACE=elsewhere is not allowed" in r.text
    assert kernel_pods(kube) == []


def make_orphan(kube: dict[str, Any], n: int, argv: list[str]) -> str:
    """A labelled kernel pod no gateway started, with a record naming a bootstrap that
    does not answer; returns its name."""
    api = kube["api"]
    labels = {"app.kubernetes.io/managed-by": "raygate"}
    orphan_id = f"00000000-0000-4000-8000-{n:012d}"
    name = f"raygate-kernel-{orphan_id}"
    api.create_namespaced_pod(
        NAMESPACE,
        {
            "metadata": {"name": name, "labels": {**labels, "raygate.io/kernel-id": orphan_id}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "kernel", "image": "x", "command": argv}],
            },
        },
    )
    record = {
        "kernel_id": orphan_id,
        "secret": base64.b64encode(os.urandom(32)).decode(),
        "control": {"host": "127.0.0.1", "port": free_port()},
        "connection": {
            **{f"{c}_port": 1 for c in ("shell", "iopub", "stdin", "control", "hb")},
            "ip": "127.0.0.1",
            "key": "",
        },
        "request": {
            "kernel_id": orphan_id,
            "spec": {"name": "k8s-python", "argv": []},
            "env": {},
            "launch_timeout": 30,
        },
    }
    data = {"record": base64.b64encode(json.dumps(record).encode()).decode()}
    api.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": name, "labels": labels}, "data": data}
    )
    return name


async def test_gateway_restart_finds_its_pods_and_deletes_orphans(
    start_server: Callable[..., ServerProcess], kube: dict[str, Any], k8s_files: dict[str, str]
) -> None:
    gateway = start_server(*gateway_args(kube, k8s_files))
    first = gateway.client
    model = first.start_kernel("k8s-python", env={"KERNEL_NAMESPACE": "team-a"})
    kernel_id = model["id"]
    assert model["placement"]["namespace"] == "team-a"
    assert (await first.run(kernel_id, "y = 'kept'")).status == "ok"

    gateway.stop(signal.SIGKILL)
    await asyncio.sleep(0.3)
    assert all(os.path.exists(f"/proc/{pid}") for pid in remote_pids(model))

    # orphans, made straight through the API: a kernel pod that has ended, and one whose
    # record names a bootstrap that no longer answers
    orphans = [make_orphan(kube, 1, ["true"]), make_orphan(kube, 2, ["sleep", "600"])]
    await asyncio.sleep(0.5)  # the first has ended by now

    second = start_server(*gateway_args(kube, k8s_files))
    assert [k["id"] for k in second.client.get("/api/kernels").json()] == [kernel_id]
    out = await second.client.run(kernel_id, "print(y)")
    assert out.stdout == "kept\n"
    for name in orphans:  # by the new gateway's startup scan
        assert gone(kube, NAMESPACE, name, timeout=5)
    # and one that ends while it runs, by its periodic sweep
    orphans.append(make_orphan(kube, 3, ["true"]))
    assert gone(kube, NAMESPACE, orphans[-1], timeout=10)
    log = second.output()
    for name, why in zip(orphans, (" (Succeeded)", ": its bootstrap is gone", " (Succeeded)")):
        assert f"deleting orphaned kernel pod {NAMESPACE}/{name}{why}" in log

    assert second.client.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert gone(kube, "team-a", model["placement"]["pod"])
    assert wait_gone(remote_pids(model)) == []


def no_kernel_objects(kube: dict[str, Any]) -> bool:
    """Whether no kernel pod and no kernel Secret exists in any namespace."""
    selector = "raygate.io/kernel-id"
    api = kube["api"]
    return not (
        api.list_pod_for_all_namespaces(label_selector=selector).items
        or api.list_secret_for_all_namespaces(label_selector=selector).items
    )


def test_disallowed_values_are_refused_before_anything_is_created(
    k8s_gateway: ServerProcess, kube: dict[str, Any]
) -> None:
    gw = k8s_gateway.client

    def volume(**source: Any) -> str:
        return json.dumps([{"name": "v", **source}])

    refusals = {
        "KERNEL_SERVICE_ACCOUNT_NAME": [
            (
                "raygate",
                "KERNEL_SERVICE_ACCOUNT_NAME=raygate is not allowed here (allowed: default, "
                "kernels, ghost; see --k8s-allowed-service-accounts)",
            )
        ],
        "KERNEL_IMAGE": [
            ("evil.example/miner:1", "KERNEL_IMAGE=evil.example/miner:1 is not allowed here"),
        ],
        "KERNEL_UID": [
            ("1234", f"KERNEL_UID=1234 is not allowed here (allowed: {NOBODY}; see "),
            ("0", "KERNEL_UID=0: kernels do not run as root"),
        ],
        "KERNEL_GID": [("100", "KERNEL_GID=100 is not allowed here")],
        "KERNEL_VOLUMES": [
            (volume(secret={"secretName": "raygate-token"}), "'v' is a secret volume"),
            (volume(projected={"sources": []}), "'v' is a projected volume"),
            (volume(hostPath={"path": "/"}), "'v' is a hostPath volume"),
            (volume(nfs={"server": "nas", "path": "/"}), "'v' is a nfs volume"),
            (
                volume(persistentVolumeClaim={"claimName": "claim-bob"}),
                "'v' claims claim-bob, which is not allowed here (allowed claims: "
                "claim-alice; see --k8s-allowed-claims)",
            ),
        ],
        "KERNEL_VOLUME_MOUNTS": [
            (
                json.dumps([{"name": "scratch-of-someone", "mountPath": "/x"}]),
                "'scratch-of-someone' is not a volume of KERNEL_VOLUMES",
            )
        ],
    }
    for var, cases in refusals.items():
        for value, words in cases:
            env = {var: value, "KERNEL_USERNAME": "alice"}
            r = gw.post("/api/kernels", json={"name": "k8s-python", "env": env})
            assert r.status_code == 400, (var, value, r.text)
            assert r.json()["reason"] == "Bad Request"
            assert words in r.json()["message"], (var, r.json()["message"])
    assert no_kernel_objects(kube)


def test_bad_allow_lists_stop_the_gateway_at_startup(
    kube: dict[str, Any], k8s_files: dict[str, str], refused_serve
) -> None:
    for option, value, words in (
        ("--k8s-allowed-images", "registry.example/[kernels", "has a '[' without its ']'"),
        ("--k8s-allowed-service-accounts", "Kernels", "'Kernels' can never match"),
        ("--k8s-allowed-uids", "0-1000", "allows 0, and kernels never run as root"),
        ("--k8s-allowed-volume-types", "secrets", "'secrets' is not a Kubernetes volume type"),
    ):
        result = refused_serve(*gateway_args(kube, k8s_files), option, value)
        assert result.exit_code == 2, result.output
        assert words in result.stderr, result.stderr


def test_pods_the_cluster_refuses_fail_with_its_words(
    k8s_gateway: ServerProcess, kube: dict[str, Any]
) -> None:
    gw = k8s_gateway.client
    # allowed by raygate, but no such service account: the API server refuses the pod
    text = fails_fast(gw, {"KERNEL_SERVICE_ACCOUNT_NAME": "ghost"}, 400)
    assert text == (
        f"Kernel k8s-python failed to start: Kubernetes refused the kernel's pod in namespace "
        f"{NAMESPACE}: pods "
        f'"{text.split(chr(34))[1]}" is forbidden: error looking up service account '
        f'{NAMESPACE}/ghost: serviceaccount "ghost" not found'
    )
    # runAsNonRoot and no uid: the kubelet will not start the container
    text = fails_fast(gw, {}, 500, name="k8s-no-uid")
    assert (
        "CreateContainerConfigError: container has runAsNonRoot and image will run as root" in text
    )
    assert no_kernel_objects(kube)  # the Secrets made before the pods are gone too


def test_a_pod_runs_as_its_uid_with_only_its_environment(
    k8s_gateway: ServerProcess, kube: dict[str, Any]
) -> None:
    env = {"KERNEL_UID": str(NOBODY), "KERNEL_GID": str(NOBODY)}
    text = fails_fast(k8s_gateway.client, env, 500, name="k8s-show-user")
    assert "container kernel exited with code 3 (Error) before the kernel reported" in text
    shown = text.split("uid=", 1)[1]
    # the shipped template's fsGroup (100) is a supplemental group, as in a real pod
    assert shown.startswith(f"{NOBODY} gid={NOBODY} groups={NOBODY} 100 env="), shown
    names = set(shown.split("env=", 1)[1].strip().strip(",").split(","))
    assert names <= {
        "PATH",
        "HOSTNAME",
        "HOME",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "RAYGATE_BOOTSTRAP_SETTINGS",
        "RAYGATE_KERNEL_SECRET",
        "RAYGATE_ADVERTISE_ADDRESS",
        "KERNEL_ID",
        "PWD",
        "SHLVL",
        "_",
    }, names
    assert {"PATH", "RAYGATE_KERNEL_SECRET", "KERNEL_ID"} <= names
    assert no_kernel_objects(kube)


# -- --kernel-isolation users ------------------------------------------------------------

ADA_IDS = (4321, 4322)
"""ada's uid and gid, from the users file: no account of this host has them."""


@pytest.fixture(scope="module")
def isolated_server(
    kube: dict[str, Any], k8s_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A gateway running each kernel as its user's account: ada by the users file's ids,
    nobody by this host's account of that name, bob with neither."""
    users = tmp_path_factory.mktemp("k8s-users") / "users.toml"
    users.write_text(
        '"tok-nobody" = "nobody"\n'
        "[users.ada]\n"
        'token = "tok-ada"\n'
        f"uid = {ADA_IDS[0]}\n"
        f"gid = {ADA_IDS[1]}\n"
        "[users.bob]\n"
        'token = "tok-bob"\n'
    )
    args = [*gateway_args(kube, k8s_files, scan="3600"), "--kernel-isolation", "users"]
    server = ServerProcess([*args, "--users-file", str(users)])
    server.wait_ready()
    yield server
    server.stop()


def test_users_mode_pods_run_as_the_users_account_never_the_requests(
    isolated_server: ServerProcess, kube: dict[str, Any]
) -> None:
    url = isolated_server.url
    for token, (uid, gid) in (("tok-ada", ADA_IDS), ("tok-nobody", (NOBODY, NOBODY))):
        text = fails_fast(Gateway(url, token), {}, 500, name="k8s-show-user")
        shown = text.split("uid=", 1)[1]
        assert shown.startswith(f"{uid} gid={gid} "), (token, shown)
    # the request cannot choose, not even an id the allow lists take in the other mode
    for var in ("KERNEL_UID", "KERNEL_GID"):
        text = fails_fast(Gateway(url, "tok-ada"), {var: str(NOBODY)}, 400, name="k8s-show-user")
        assert f"{var} is not accepted here: this gateway runs each kernel as its" in text, text
        assert "never from the request" in text, text
    # no uid for bob in the users file and no account bob here: refused before any pod
    r = Gateway(url, "tok-bob").post("/api/kernels", json={"name": "k8s-show-user"})
    assert r.status_code == 403, r.text
    assert "has no OS account 'bob'" in r.json()["message"], r.text
    assert no_kernel_objects(kube)


def test_unreachable_api_server_is_a_503_that_names_it(
    start_server: Callable[..., ServerProcess],
    kube: dict[str, Any],
    k8s_files: dict[str, str],
    tmp_path: Any,
) -> None:
    """A kubeconfig whose API server nobody answers: the gateway starts and stays healthy;
    each start is a quick 503 that says which server it could not reach."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    config = yaml.safe_load(open(kube["kubeconfig"]))
    config["clusters"][0]["cluster"]["server"] = nowhere
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    args = gateway_args(kube, k8s_files)
    args[args.index("--k8s-kubeconfig") + 1] = str(kubeconfig)
    server = start_server(*args)
    gw = server.client
    started = time.monotonic()
    r = gw.post("/api/kernels", json={"name": "k8s-python"})
    assert r.status_code == 503, r.text
    body = r.json()
    assert set(body) == {"reason", "message"} and body["reason"] == "Service Unavailable"
    assert f"cannot reach the Kubernetes API server at {nowhere}" in body["message"], body
    assert time.monotonic() - started < 15
    assert gw.get("/api/kernels").json() == []
    assert gw.get("/api/ready").status_code == 200
