"""Deployment files: the kustomizations under k8s/, the Dockerfile, deploy/ray-up.yaml.

Every kustomization is built (by ``kubectl kustomize``, which CI must have, and by the small
Python implementation below of the kustomize features k8s/ uses; both must agree) and each object is validated offline: core objects against the Kubernetes 1.31
OpenAPI schemas of the ``kubernetes-validate`` package, the ``RayCluster`` against
KubeRay's CRD schema (vendored: ``tests/schemas/ray.io_rayclusters.yaml``). No cluster and
no Docker engine is needed; the image's entrypoint is run here as a process instead.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import IN_CI, free_port, missing

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUSTOMIZATIONS = ["base", ".", "overlays/kuberay"]
"""Relative to k8s/: the base, kernels as pods (k8s/ itself), kernels on KubeRay."""
K8S_VERSION = "1.31.0"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


SCHEMAS = ROOT / "tests" / "schemas"


# -- the subset of kustomize k8s/ uses ----------------------------------------------------


def name_hash(obj: dict[str, Any]) -> str:
    """A 10-character content hash suffix for a generated ConfigMap or Secret, in
    kustomize's alphabet. Not kustomize's own hash (which this does not reproduce): builds
    are compared with the suffixes taken off (:func:`unsuffixed`)."""
    encoded = {"kind": obj["kind"], "name": obj["metadata"]["name"], "data": obj["data"]}
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10].translate(str.maketrans("013ae", "ghkmt"))


def unsuffixed(objs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The build keyed by object, with generated names' hash suffixes (and every
    reference to them) taken off."""
    text = json.dumps(objs)
    for obj in objs:
        name = obj["metadata"]["name"]
        if obj["kind"] in ("ConfigMap", "Secret") and re.search(r"-[a-z0-9]{10}$", name):
            text = text.replace(json.dumps(name), json.dumps(name[:-11]))
    return {key(o): o for o in json.loads(text)}


def _generated(base: Path, spec: dict[str, Any], kind: str) -> dict[str, Any]:
    data: dict[str, str] = {}
    for entry in spec.get("files", []):
        key, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        data[key or os.path.basename(path)] = (base / path).read_text()
    for env_file in spec.get("envs", []):
        for line in (base / env_file).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                data[key.strip()] = value
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    obj["data"] = data
    return obj


def _json_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        target: Any = obj
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if op["op"] in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(target, list):
                if last == "-":
                    target.append(value)
                elif op["op"] == "add":
                    target.insert(int(last), value)
                else:
                    target[int(last)] = value
            else:
                if op["op"] == "replace":
                    assert last in target, f"replace of missing {op['path']}"
                target[last] = value
        elif op["op"] == "remove":
            del target[int(last) if isinstance(target, list) else last]
        else:
            raise NotImplementedError(op["op"])


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    if obj["kind"] == "Pod":
        return [spec]
    if "template" in spec:
        return [spec["template"].get("spec") or {}]
    return []


def _rename_refs(objs: list[dict[str, Any]], renames: dict[tuple[str, str], str]) -> None:
    def fix(kind: str, holder: dict[str, Any], key: str) -> None:
        if holder and (kind, holder.get(key)) in renames:
            holder[key] = renames[(kind, holder[key])]

    for obj in objs:
        for pod in _pod_specs(obj):
            for volume in pod.get("volumes") or []:
                fix("ConfigMap", volume.get("configMap"), "name")
                fix("Secret", volume.get("secret"), "secretName")
            for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
                for var in container.get("env") or []:
                    source = var.get("valueFrom") or {}
                    fix("ConfigMap", source.get("configMapKeyRef"), "name")
                    fix("Secret", source.get("secretKeyRef"), "name")
                for source in container.get("envFrom") or []:
                    fix("ConfigMap", source.get("configMapRef"), "name")
                    fix("Secret", source.get("secretRef"), "name")


def kustomize_py(path: Path) -> list[dict[str, Any]]:
    """Build a kustomization: resources, configMapGenerator/secretGenerator (with kustomize's
    name hashes and the references to them), JSON 6902 patches, namespace and labels."""
    k = yaml.safe_load((path / "kustomization.yaml").read_text())
    objs: list[dict[str, Any]] = []
    for resource in k.get("resources", []):
        target = path / resource
        if target.is_dir():
            objs += kustomize_py(target)
        else:
            objs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    generated = [_generated(path, g, "ConfigMap") for g in k.get("configMapGenerator", [])]
    generated += [_generated(path, g, "Secret") for g in k.get("secretGenerator", [])]
    objs += generated
    for patch in k.get("patches", []):
        ops = yaml.safe_load((path / patch["path"]).read_text())
        sel = patch["target"]
        matched = [
            o
            for o in objs
            if o["kind"] == sel["kind"]
            and o["metadata"]["name"] == sel.get("name", o["metadata"]["name"])
        ]
        assert matched, f"patch {patch['path']} matches nothing"
        for obj in matched:
            _json_patch(obj, ops)
    for obj in objs:
        meta = obj["metadata"]
        if k.get("namespace") and obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = k["namespace"]
        for labels in k.get("labels", []):
            assert not labels.get("includeSelectors") and not labels.get("includeTemplates")
            meta.setdefault("labels", {}).update(labels["pairs"])
    renames = {}
    specs = k.get("configMapGenerator", []) + k.get("secretGenerator", [])
    for obj, spec in zip(generated, specs):
        if not (spec.get("options") or {}).get("disableNameSuffixHash"):
            old = obj["metadata"]["name"]
            obj["metadata"]["name"] = f"{old}-{name_hash(obj)}"
            renames[(obj["kind"], old)] = obj["metadata"]["name"]
    _rename_refs(objs, renames)
    return objs


def kubectl() -> str:
    """The kubectl on PATH; a test that needs it and finds none is skipped, under CI failed."""
    found = shutil.which("kubectl")
    if not found:
        missing("kubectl", "apt-get install kubernetes-client; .ci/run does")
    return found


def kustomize_kubectl(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


OPERATOR_SECRETS = {
    "raygate-auth": {"token": "client-token-for-tests"},
    "raygate-ray-auth": {"auth_token": "ray-token-for-tests"},
}
"""The Secrets no file in k8s/ holds (so none is committed): the operator makes them in the
cluster, as the README says (``kubectl create secret generic``); here, test values."""


def fresh_clone(dest: Path) -> Path:
    """The repository as a fresh clone has it: the files git tracks or would track (tracked,
    or untracked and not ignored, so that uncommitted work is checked too), nothing that
    .gitignore keeps out (an operator's local token files)."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        source = ROOT / rel
        if rel.startswith("k8s/") and source.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    return dest


@pytest.fixture(scope="module")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k8s/ as a fresh clone has it: nothing written by hand before the build."""
    return fresh_clone(tmp_path_factory.mktemp("clone")) / "k8s"


@pytest.fixture(scope="module")
def built(k8s_tree: Path) -> dict[str, list[dict[str, Any]]]:
    """Each kustomization, built by kubectl (by the Python build, checked against kubectl's
    where both run, only on a developer's machine without kubectl)."""
    build = kustomize_kubectl if shutil.which("kubectl") or IN_CI else kustomize_py
    return {name: build(k8s_tree / name) for name in KUSTOMIZATIONS}


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def gateway(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = find(objs, "Deployment", "raygate")
    pod = deployment["spec"]["template"]["spec"]
    return deployment, next(c for c in pod["containers"] if c["name"] == "raygate")


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in container.get("env") or []}


# -- building ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_python_build_agrees_with_kubectl(k8s_tree: Path, name: str) -> None:
    ours = kustomize_py(k8s_tree / name)
    theirs = kustomize_kubectl(k8s_tree / name)
    assert unsuffixed(ours) == unsuffixed(theirs)


def test_fresh_clone_builds_and_ships_no_secret(k8s_tree: Path) -> None:
    """``kubectl kustomize`` (what ``kubectl apply -k`` builds) works on a fresh clone, and
    no build carries a credential: the Secrets it uses are the operator's, made as the
    README says."""
    readme = (ROOT / "README.md").read_text()
    for name in KUSTOMIZATIONS:
        objs = kustomize_kubectl(k8s_tree / name)
        assert not [o for o in objs if o["kind"] == "Secret"], name
    for secret, keys in OPERATOR_SECRETS.items():
        for key_name in keys:
            assert f"create secret generic {secret} --from-literal={key_name}=" in readme


# -- validating -------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_core_objects_validate(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    import kubernetes_validate

    for obj in built[name]:
        if obj["apiVersion"].startswith("ray.io/"):
            for template in _ray_pod_templates(obj):
                pod = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(template)}
                pod.setdefault("metadata", {})["name"] = "ray-node"
                kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _ray_pod_templates(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def _structural(schema: Any) -> Any:
    """A CRD's structural schema as plain JSON Schema: int-or-string made explicit, and
    unknown fields refused where Kubernetes would prune them (to catch misspellings)."""
    if isinstance(schema, list):
        return [_structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _structural(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def schema_validation() -> Any:
    """jsonschema, imported by the tests that use it: its import is 1.9 s of CPU here (its
    IRI format checker's grammars), which every pytest process spent collecting this file."""
    import jsonschema

    return jsonschema


def test_raycluster_validates_against_the_kuberay_crd(built) -> None:
    # libyaml's loader where PyYAML has it: the CRD is large (6 s in pure Python, loaded)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((SCHEMAS / "ray.io_rayclusters.yaml").read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _structural(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    cluster = find(built["overlays/kuberay"], "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    # the schema checked once (jsonschema.validate checks it on every call: seconds each)
    jsonschema = schema_validation()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    validator.validate(cluster)
    broken = copy.deepcopy(cluster)
    broken["spec"]["enableInTreeAutoscalling"] = True
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


# -- what the objects say ---------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_references_resolve(built, name: str) -> None:
    """Every ConfigMap and Secret (and key) the pods use is in the same build."""
    objs = built[name]
    have = {(o["kind"], o["metadata"]["name"]): o for o in objs}

    def check(kind: str, ref_name: str, ref_key: str | None = None) -> None:
        if kind == "Secret" and ref_name in OPERATOR_SECRETS:
            assert ref_key is None or ref_key in OPERATOR_SECRETS[ref_name], (ref_name, ref_key)
            return
        assert (kind, ref_name) in have, f"{name}: {kind} {ref_name} is not built"
        if ref_key:
            assert ref_key in have[(kind, ref_name)]["data"], f"{kind} {ref_name}: no {ref_key}"

    for obj in objs:
        for pod in _pod_specs(obj):
            for volume in pod.get("volumes") or []:
                if "configMap" in volume:
                    for item in volume["configMap"].get("items") or [{}]:
                        check("ConfigMap", volume["configMap"]["name"], item.get("key"))
                if "secret" in volume:
                    for item in volume["secret"].get("items") or [{}]:
                        check("Secret", volume["secret"]["secretName"], item.get("key"))
            for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
                for var in container.get("env") or []:
                    ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        check("Secret", ref["name"], ref["key"])
        if obj["kind"] == "RayCluster":
            check("Secret", obj["spec"]["authOptions"]["secretName"], "auth_token")
        if obj["kind"] == "Service":
            pods = [o for o in objs if o["kind"] == "Deployment"]
            selector = obj["spec"]["selector"]
            assert any(
                selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                for d in pods
            )


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_gateway_deployment(built, name: str) -> None:
    from raygate.cli import serve

    objs = built[name]
    deployment, container = gateway(objs)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] >= (1 if name == "base" else 2)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert (
        container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health"
    env = env_of(container)
    assert env["RAYGATE_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"].startswith("raygate-auth")
    assert env["RAYGATE_IP"]["value"] == "0.0.0.0"
    # every RAYGATE_* variable is one raygate serve reads
    known = {f"RAYGATE_{p.name.upper()}" for p in serve.params} | {"RAYGATE_CONFIG"}
    assert {v for v in env if v.startswith("RAYGATE_")} <= known
    assert find(objs, "ServiceAccount", "raygate")
    assert find(objs, "Service", "raygate")["spec"]["ports"][0]["targetPort"] == "http"


def test_kernelspecs_configmap(built) -> None:
    from raygate.resources import resource_request

    deployment, container = gateway(built["base"])
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "kernelspecs"
    )
    data = find(built["base"], "ConfigMap", volume["configMap"]["name"])["data"]
    specs = {item["path"]: json.loads(data[item["key"]]) for item in volume["configMap"]["items"]}
    assert set(specs) == {"python3/kernel.json", "python3-gpu/kernel.json"}
    gpu = resource_request(specs["python3-gpu/kernel.json"]["metadata"]["raygate"])
    assert gpu.gpus == 1 and gpu.memory
    assert resource_request(specs["python3/kernel.json"]["metadata"]["raygate"]).gpus == 0
    mount = next(m for m in container["volumeMounts"] if m["name"] == "kernelspecs")
    assert env_of(container)["RAYGATE_KERNELSPEC_DIRS"]["value"] == mount["mountPath"]


def test_role_grants_exactly_what_the_kubernetes_launcher_calls(built) -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "launchers" / "kubernetes").glob("*.py"))
    calls = set(re.findall(r"self\.api\.(create|read|delete|patch|list)_namespaced_(\w+)", source))
    calls |= {("list", m) for m in re.findall(r"list_labelled\(launcher, \"(\w+)\"\)", source)}
    assert ("create", "pod") in calls and ("list", "secret") in calls  # the patterns still match
    verb = {"create": "create", "read": "get", "delete": "delete", "patch": "patch", "list": "list"}
    needed: set[tuple[str, str]] = set()
    for action, what in calls:
        resource = {"pod": "pods", "secret": "secrets", "pod_log": "pods/log"}[what]
        needed.add((resource, verb[action]))
    objs = built["."]
    role = find(objs, "Role", "raygate-kernels")
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == needed
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    binding = find(objs, "RoleBinding", "raygate-kernels")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "raygate", "namespace": role["metadata"]["namespace"]}
    ]
    deployment, container = gateway(objs)
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert not any(o["kind"] in ("Role", "RoleBinding", "ClusterRole") for o in built["base"])
    # the pod template the launcher is given is k8s/kernel-pod.yaml
    env = env_of(container)
    template = env["RAYGATE_K8S_POD_TEMPLATE"]["value"]
    volume = next(
        v
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v and v["configMap"]["name"].startswith("raygate-kernel-pod")
    )
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    data = find(objs, "ConfigMap", volume["configMap"]["name"])["data"]
    assert (
        data[os.path.relpath(template, mount["mountPath"])] == (K8S / "kernel-pod.yaml").read_text()
    )


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
        }[op]
        if not ok:
            return False
    return True


def test_only_the_gateway_reaches_kernel_pods(built) -> None:
    """The NetworkPolicy selects every kernel pod as the kubernetes launcher labels it (not
    the gateway), and lets in the gateway's pods only: not kernels, not other pods."""
    from raygate.launchers.kubernetes.pod import KERNEL_ID_LABEL, MANAGED_BY

    objs = built["."]
    policy = find(objs, "NetworkPolicy", "raygate-kernels")
    spec = policy["spec"]
    gateway_labels = find(objs, "Deployment", "raygate")["spec"]["template"]["metadata"]["labels"]
    kernel_labels = {MANAGED_BY: "raygate", KERNEL_ID_LABEL: "0f6a", "app": "anything"}
    assert _selects(spec["podSelector"], kernel_labels)
    assert not _selects(spec["podSelector"], gateway_labels)
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # this namespace's pods only
    assert _selects(peer["podSelector"], gateway_labels)
    assert not _selects(peer["podSelector"], kernel_labels)
    assert not _selects(peer["podSelector"], {"app.kubernetes.io/name": "raygate"})
    assert "ports" not in rule  # kernels' ports are chosen at start: any port, gateway only


def test_kuberay_overlay_wiring(built) -> None:
    objs = built["overlays/kuberay"]
    cluster = find(objs, "RayCluster")
    spec = cluster["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in str(groups["cpu"]["template"])
    assert all(g["maxReplicas"] > g["minReplicas"] for g in groups.values())
    assert spec["authOptions"]["mode"] == "token"
    token_secret = spec["authOptions"]["secretName"]

    deployment, container = gateway(objs)
    pod = deployment["spec"]["template"]["spec"]
    env = env_of(container)
    host, port = env["RAYGATE_RAY_ADDRESS"]["value"].split(":")
    assert host == f"{cluster['metadata']['name']}-head-svc" and port == "6379"
    # the gateway and its raylet read the RayCluster's own token
    token_file = env["RAYGATE_RAY_AUTH_TOKEN_FILE"]["value"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in [container, *pod["initContainers"]]:
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == os.path.dirname(token_file))
        assert volumes[mount["name"]]["secret"]["secretName"] == token_secret
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "ray-node")
    assert sidecar["restartPolicy"] == "Always"
    assert "--num-cpus=0" in sidecar["args"][0] and "--num-gpus=0" in sidecar["args"][0]
    assert env_of(sidecar)["RAY_GCS_ADDRESS"]["value"] == env["RAYGATE_RAY_ADDRESS"]["value"]
    shared = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/tmp"] == shared["/tmp"]
    # the images Ray runs are raygate's kernel image, of the Ray version it pins
    ray_pin = re.search(r"^ray==(\S+)$", (ROOT / "deploy/constraints.txt").read_text(), re.M)
    assert spec["rayVersion"] == ray_pin.group(1)
    for template in _ray_pod_templates(cluster):
        assert template["spec"]["containers"][0]["image"] == KERNEL_IMAGE


# -- the container images -----------------------------------------------------------------

GATEWAY_IMAGE = "raygate/raygate:0.1.0"
KERNEL_IMAGE = "raygate/raygate-kernel:0.1.0"


def dockerfile_stages() -> tuple[dict[str, str], dict[str, list[tuple[str, str]]]]:
    """ARG defaults and, per stage, its (instruction, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.I)
            assert match, f"unnamed stage: {line}"
            current = stages[match.group(2)] = [("FROM", match.group(1))]
        else:
            assert current is not None
            current.append((instruction, rest))
    return args, stages


def test_dockerfile() -> None:
    args, stages = dockerfile_stages()
    assert list(stages)[-1] == "gateway", "docker build without --target builds the gateway"
    assert {"wheel", "gateway", "kernel"} <= set(stages)
    for name, steps in stages.items():
        image = steps[0][1]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        if image in stages:
            continue
        repo, _, tag = image.partition("@")[0].rpartition(":")
        assert repo and tag and tag != "latest", f"stage {name}: unpinned base image {image}"
        for instruction, rest in steps:
            if instruction == "RUN" and re.search(r"\bpip (install|wheel)\b", rest):
                for command in re.split(r"&&|;", rest):
                    if re.search(r"\bpip (install|wheel)\b", command):
                        assert re.search(r"(--constraint|-c)\s+\S*constraints\.txt", command), (
                            command
                        )
            if instruction == "COPY":
                sources = [s for s in shlex.split(rest) if not s.startswith("--")][:-1]
                if "--from" not in rest:
                    assert all((ROOT / s).exists() for s in sources), rest
    for name in ("gateway", "kernel"):
        user = [rest for instruction, rest in stages[name] if instruction == "USER"][-1]
        uid, _, gid = user.partition(":")
        assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), user
    gateway_steps = dict(stages["gateway"])
    assert json.loads(gateway_steps["ENTRYPOINT"]) == ["raygate", "serve"]
    assert "RAYGATE_IP=0.0.0.0" in gateway_steps["ENV"]
    header = (ROOT / "Dockerfile").read_text()
    assert f"--target gateway -t {GATEWAY_IMAGE}" in header
    assert f"--target kernel  -t {KERNEL_IMAGE}" in header
    ray_pin = re.search(r"^ray==(\S+)$", (ROOT / "deploy/constraints.txt").read_text(), re.M)
    assert f"rayproject/ray:{ray_pin.group(1)}-py3{sys.version_info.minor}" in args["RAY_IMAGE"]


def test_constraints_pin_raygates_dependencies() -> None:
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "deploy/constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[canonicalize_name(name)] = version
    for line in metadata.distribution("raygate").requires or []:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": "kubernetes"}):
            continue
        name = canonicalize_name(req.name)
        if name == "raygate":
            continue
        assert name in pins, f"{req.name} is not pinned"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_manifest_images_are_the_dockerfiles() -> None:
    images = set()
    for path in K8S.rglob("*.yaml"):
        images |= set(re.findall(r"image:\s*(\S+)", path.read_text()))
    images.discard("raygate/kernel-python:latest")  # k8s/kernel-pod.yaml's; overridden
    assert images == {GATEWAY_IMAGE, KERNEL_IMAGE}
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert GATEWAY_IMAGE.endswith(":" + version.group(1))


def test_entrypoint_serves_and_passes_the_readiness_probe(built, tmp_path: Path) -> None:
    """``raygate serve`` (the image's ENTRYPOINT) with the environment the base Deployment
    gives it, its kernelspecs rendered from the ConfigMap, answers the Deployment's own
    readiness probe; kernels run locally here instead of in an embedded Ray."""
    objs = built["base"]
    deployment, container = gateway(objs)
    pod = deployment["spec"]["template"]["spec"]
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = OPERATOR_SECRETS[ref["name"]][ref["key"]]
    # mounted volumes become directories here
    for mount in container["volumeMounts"]:
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        local = tmp_path / mount["name"]
        local.mkdir()
        if "configMap" in volume:
            data = find(objs, "ConfigMap", volume["configMap"]["name"])["data"]
            for item in volume["configMap"]["items"]:
                (local / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (local / item["path"]).write_text(data[item["key"]])
        for name, value in env.items():
            if value == mount["mountPath"]:
                env[name] = str(local)
    env["HOME"] = str(tmp_path / "tmp")
    env.pop("POD_IP", None)
    # the probe, as the Deployment defines it; its named port is the container port,
    # which RAYGATE_PORT sets: moved together to a free port here
    probe = container["readinessProbe"]["httpGet"]
    port = next(p for p in container["ports"] if p["name"] == probe["port"])
    assert env["RAYGATE_PORT"] == str(port["containerPort"])
    env["RAYGATE_PORT"] = str(free_port())
    _, stages = dockerfile_stages()
    entrypoint = json.loads(dict(stages["gateway"])["ENTRYPOINT"])
    executable = shutil.which(entrypoint[0]) or None
    command = [executable] if executable else [sys.executable, "-m", "raygate"]
    command += entrypoint[1:] + ["--default-launcher", "local"]
    log = open(tmp_path / "raygate.log", "wb")
    proc = subprocess.Popen(
        command,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{env['RAYGATE_PORT']}"
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(
                    url + probe["path"], timeout=container["readinessProbe"]["timeoutSeconds"]
                ).status_code
            except httpx.HTTPError:
                status = None
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, (tmp_path / "raygate.log").read_text()
        live = container["livenessProbe"]["httpGet"]["path"]
        assert httpx.get(url + live).json()["status"] == "ok"
        assert httpx.get(url + "/api/kernels").status_code == 401  # only the probes are open
        auth = {"Authorization": f"token {env['RAYGATE_AUTH_TOKEN']}"}
        specs = httpx.get(url + "/api/kernelspecs", headers=auth).json()
        assert {"python3", "python3-gpu"} <= set(specs["kernelspecs"])
        assert specs["default"] == env["RAYGATE_DEFAULT_KERNEL_NAME"]
        started = httpx.post(
            url + "/api/kernels", headers=auth, json={"name": "python3"}, timeout=60
        )
        assert started.status_code == 201, started.text
        httpx.delete(url + f"/api/kernels/{started.json()['id']}", headers=auth, timeout=30)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


# -- ray up -------------------------------------------------------------------------------


def test_ray_up_config_validates_against_rays_schema() -> None:
    # Found without importing ray: an import here would fix Ray's auth mode for this
    # process before the session's token-auth test cluster starts.
    (ray_dir,) = importlib.util.find_spec("ray").submodule_search_locations
    schema = json.loads((Path(ray_dir) / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "deploy" / "ray-up.yaml").read_text())
    schema_validation().validate(config, schema)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t["resources"].get("kernel") for t in gpu)
    head = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head and "raygate serve" in head and "--ray-address auto" in head
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    # the kernelspec commands it runs are valid raygate kernelspec create calls
    from click.testing import CliRunner

    from raygate.cli import main

    for command in config["head_setup_commands"]:
        if "kernelspec create" in command:
            argv = shlex.split(command.replace("~/kernels", "KDIR"))
            argv = argv[argv.index("kernelspec") :]
            with CliRunner().isolated_filesystem():
                result = CliRunner().invoke(main, argv)
                assert result.exit_code == 0, result.output
