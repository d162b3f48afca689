"""A stand-in for a Kubernetes API server with one node, for raygate's tests.

It serves the part of the core/v1 REST API that the official ``kubernetes`` client uses
for pods and secrets, with the real paths, bodies and status codes:

* ``POST/GET/DELETE /api/v1/namespaces/{ns}/pods[/{name}]``, ``GET /api/v1/pods``,
  ``GET .../pods/{name}/log``; lists filter by ``labelSelector`` (equality, ``!=``,
  existence, ``in``/``notin``);
* ``POST/GET/PATCH/DELETE /api/v1/namespaces/{ns}/secrets[/{name}]`` (merge patches),
  ``GET /api/v1/secrets``;
* errors as ``Status`` objects: 401 without the bearer token, 404 ``NotFound``, 409
  ``AlreadyExists``, 422 ``Invalid`` (names, containers, images, label values,
  quantities, extended resources whose request is not their limit).

A pod is "scheduled" onto the one node (``--cpu``, ``--memory``, ``--gpus`` allocatable)
when its requests fit beside the running pods and its ``nodeSelector`` matches; otherwise
it stays ``Pending`` with ``PodScheduled=False``, reason ``Unschedulable`` and a message
worded like the scheduler's. Pending pods are retried as capacity frees. A scheduled pod
whose image is listed with ``--unpullable-image`` gets the ``ErrImagePull`` then
``ImagePullBackOff`` waiting state; an image name with characters no registry allows gets
``InvalidImageName``. Otherwise its container's ``command`` + ``args`` really run here as a
process group, with the container's ``env`` (``value``, ``secretKeyRef`` from the stored
secrets, ``fieldRef`` for the pod's name, namespace and IP, which is 127.0.0.1) and
``workingDir``; its exit ends the pod (``Succeeded``/``Failed``, restartPolicy Never).
Deleting a pod sends SIGTERM, then SIGKILL after the grace period, and deletes the
secrets it owns (``ownerReferences``), as Kubernetes' garbage collector would.

Where it matters for what a pod may do, it is as strict as the real thing:

* a container's environment is only what the kubelet gives one: the pod's ``env``, the
  image's ``PATH`` (this machine's), ``HOSTNAME``, ``HOME`` of its user, and
  ``KUBERNETES_SERVICE_HOST``/``_PORT``; nothing of the stand-in's own environment;
* a pod naming a service account that does not exist (only ``default`` and those given
  with ``--service-account``) is refused with the admission plugin's 403;
* the container runs as its ``runAsUser``/``runAsGroup`` (the container's security
  context over the pod's; supplemental groups and ``fsGroup`` as extra groups); with
  neither, as the "image's" user, root. ``runAsNonRoot`` with uid 0, or with no uid, fails
  the container with the kubelet's ``CreateContainerConfigError``. Switching users needs
  the stand-in to run as root (CI does); otherwise a pod for another uid gets
  ``RunContainerError``.

Left out: watches, other kinds, field selectors, volumes (recorded, not mounted),
container restarts, resourceVersion checks.

Run (from tests/): ``python -m standins.kube_apiserver --port P --token T [--gpus 1 --cpu 4
--memory 8Gi --service-account kernels]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import json
import os
import pwd
import re
import signal
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from standins import stop_group, ticking_lifespan

NODE = "standin-node"
POD_IP = "127.0.0.1"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
IMAGE = re.compile(r"^[a-z0-9]+([._/:@-][A-Za-z0-9_.-]+)*$")
QUANTITY = re.compile(r"^([0-9]*\.?[0-9]+)(m|k|M|G|T|Ki|Mi|Gi|Ti|)$")
SUFFIX = {
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
NATIVE = ("cpu", "memory", "ephemeral-storage")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity(value: Any) -> float:
    match = QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"quantities must match the regular expression {QUANTITY.pattern!r}")
    return float(match.group(1)) * SUFFIX[match.group(2)]


def status(code: int, reason: str, message: str, **details: Any) -> JSONResponse:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=code)


def not_found(resource: str, name: str) -> JSONResponse:
    return status(404, "NotFound", f'{resource} "{name}" not found', name=name, kind=resource)


# -- label selectors ------------------------------------------------------------------


def parse_selector(text: str) -> list[tuple[str, str, list[str]]]:
    """``[(key, op, values)]`` with op one of ``=``, ``!=``, ``in``, ``notin``, ``exists``,
    ``!exists``."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    out = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        m = re.match(r"^(\S+)\s+(in|notin)\s+\((.*)\)$", part)
        if m:
            out.append((m.group(1), m.group(2), [v.strip() for v in m.group(3).split(",")]))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            out.append((key.strip(), "!=", [value.strip()]))
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            out.append((key.strip(), "=", [value.strip()]))
        elif part.startswith("!"):
            out.append((part[1:].strip(), "!exists", []))
        else:
            out.append((part, "exists", []))
    return out


def selects(selector: list[tuple[str, str, list[str]]], labels: dict[str, str]) -> bool:
    for key, op, values in selector:
        value = labels.get(key)
        if op == "=" and value != values[0]:
            return False
        if op == "!=" and value == values[0]:
            return False
        if op == "in" and value not in values:
            return False
        if op == "notin" and value in values:
            return False
        if op == "exists" and value is None:
            return False
        if op == "!exists" and value is not None:
            return False
    return True


# -- the cluster ------------------------------------------------------------------------


class Cluster:
    def __init__(self, args: argparse.Namespace) -> None:
        self.namespaces = set(args.namespaces.split(","))
        self.allocatable = {
            "cpu": quantity(args.cpu),
            "memory": quantity(args.memory),
            "nvidia.com/gpu": float(args.gpus),
        }
        self.node_labels = {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}
        self.unpullable = set(args.unpullable_image or [])
        self.service_accounts = {"default", *(args.service_account or [])}
        self.port = args.port
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.procs: dict[tuple[str, str], subprocess.Popen] = {}
        self.pull_failed: dict[tuple[str, str], float] = {}
        self.version = 1000
        self.logdir = tempfile.mkdtemp(prefix="kube-standin-")

    def stamp(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def new_meta(self, meta: dict[str, Any], ns: str) -> dict[str, Any]:
        meta = dict(meta)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now())
        meta.setdefault("labels", {})
        return meta

    # -- scheduling --

    @staticmethod
    def requests(pod: dict[str, Any]) -> dict[str, float]:
        total: dict[str, float] = {}
        for c in pod["spec"]["containers"]:
            res = c.get("resources") or {}
            asked = {**(res.get("limits") or {}), **(res.get("requests") or {})}
            for name, value in asked.items():
                total[name] = total.get(name, 0.0) + quantity(value)
        return total

    def in_use(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for pod in self.pods.values():
            if pod["spec"].get("nodeName") and pod["status"]["phase"] in (
                "Pending",
                "Running",
            ):
                for name, amount in self.requests(pod).items():
                    used[name] = used.get(name, 0.0) + amount
        return used

    def unschedulable_reason(self, pod: dict[str, Any]) -> str | None:
        selector = pod["spec"].get("nodeSelector") or {}
        never: list[str] = []
        now_short: list[str] = []
        if any(self.node_labels.get(k) != v for k, v in selector.items()):
            never.append("1 node(s) didn't match Pod's node affinity/selector")
        used = self.in_use()
        for name, amount in sorted(self.requests(pod).items()):
            have = self.allocatable.get(name, 0.0)
            if amount > have:
                never.append(f"1 Insufficient {name}")
            elif amount > have - used.get(name, 0.0):
                now_short.append(f"1 Insufficient {name}")
        if not never and not now_short:
            return None
        head = f"0/1 nodes are available: {', '.join(never + now_short)}."
        if never:
            return f"{head} preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        return (
            f"{head} preemption: 0/1 nodes are available: 1 No preemption victims found "
            "for incoming pod."
        )

    def set_condition(self, pod: dict[str, Any], kind: str, value: str, **extra: Any) -> None:
        conds = [c for c in pod["status"].setdefault("conditions", []) if c["type"] != kind]
        conds.append(
            {
                "type": kind,
                "status": value,
                "lastProbeTime": None,
                "lastTransitionTime": now(),
            }
            | extra
        )
        pod["status"]["conditions"] = conds

    def container_status(self, pod: dict[str, Any], state: dict[str, Any]) -> None:
        c = pod["spec"]["containers"][0]
        pod["status"]["containerStatuses"] = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": "running" in state,
                "started": "running" in state,
                "restartCount": 0,
                "state": state,
            }
        ]

    def resolve_env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env = {}
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"])
                continue
            source = var.get("valueFrom") or {}
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.secrets.get((ns, ref["name"]))
                if secret is None or ref["key"] not in (secret.get("data") or {}):
                    if ref.get("optional"):
                        continue
                    what = f'secret "{ref["name"]}" not found'
                    if secret is not None:
                        what = f"couldn't find key {ref['key']} in Secret {ns}/{ref['name']}"
                    raise LookupError(what)
                env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                env[var["name"]] = {
                    "metadata.name": pod["metadata"]["name"],
                    "metadata.namespace": ns,
                    "status.podIP": POD_IP,
                    "status.hostIP": POD_IP,
                    "spec.nodeName": NODE,
                }.get(path, "")
        return env

    @staticmethod
    def container_user(
        pod: dict[str, Any], container: dict[str, Any]
    ) -> tuple[int, int, list[int]] | str:
        """``(uid, gid, extra groups)`` the container runs as, or the kubelet's message
        when ``runAsNonRoot`` forbids it."""
        pod_sc = pod["spec"].get("securityContext") or {}
        sc = {**pod_sc, **(container.get("securityContext") or {})}
        uid = sc.get("runAsUser")
        where = f'pod: "{pod["metadata"]["name"]}_{pod["metadata"]["namespace"]}'
        where += f'({pod["metadata"]["uid"]})", container: {container["name"]}'
        if sc.get("runAsNonRoot"):
            if uid is None:  # the "image" runs as root
                return f"container has runAsNonRoot and image will run as root ({where})"
            if int(uid) == 0:
                return f"container's runAsUser breaks non-root policy ({where})"
        uid = int(uid or 0)
        gid = sc.get("runAsGroup")
        if gid is None:  # the image's passwd entry for the uid, else group 0
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = 0
        groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
        if pod_sc.get("fsGroup") is not None:
            groups.append(int(pod_sc["fsGroup"]))
        return uid, int(gid), groups

    def image_env(self, pod: dict[str, Any], uid: int) -> dict[str, str]:
        """What a container has in its environment besides the pod's ``env``."""
        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            home = "/"
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOSTNAME": pod["metadata"]["name"],
            "HOME": home,
            "KUBERNETES_SERVICE_HOST": POD_IP,
            "KUBERNETES_SERVICE_PORT": str(self.port),
        }

    def start_container(self, key: tuple[str, str], pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        image = container["image"]
        if not IMAGE.match(image):
            self.container_status(
                pod,
                {
                    "waiting": {
                        "reason": "InvalidImageName",
                        "message": f'Failed to apply default image tag "{image}": couldn\'t '
                        f'parse image name "{image}": invalid reference format',
                    }
                },
            )
            return
        if image in self.unpullable:
            # the kubelet reports ErrImagePull, then ImagePullBackOff between retries
            first = self.pull_failed.setdefault(key, time.monotonic())
            reason = "ImagePullBackOff" if time.monotonic() - first > 3 else "ErrImagePull"
            message = (
                f'Back-off pulling image "{image}"'
                if reason == "ImagePullBackOff"
                else f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
                f"failed to resolve reference: {image}: not found"
            )
            self.container_status(pod, {"waiting": {"reason": reason, "message": message}})
            return
        try:
            env = self.resolve_env(pod, container)
        except LookupError as exc:
            self.container_status(
                pod,
                {
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": str(exc),
                    }
                },
            )
            return
        user = self.container_user(pod, container)
        if isinstance(user, str):
            self.container_status(
                pod,
                {"waiting": {"reason": "CreateContainerConfigError", "message": user}},
            )
            return
        uid, gid, groups = user
        if uid != os.geteuid() and os.geteuid() != 0:
            message = f"the stand-in cannot run a container as uid {uid}: it is not root"
            self.container_status(
                pod, {"waiting": {"reason": "RunContainerError", "message": message}}
            )
            return
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        cwd = container.get("workingDir") or None
        if cwd and not os.path.isdir(cwd):
            cwd = None
        log = open(os.path.join(self.logdir, f"{key[0]}_{key[1]}.log"), "wb")
        try:
            switch: dict[str, Any] = {}
            if os.geteuid() == 0:
                switch = {"user": uid, "group": gid, "extra_groups": groups}
            proc = subprocess.Popen(
                argv,
                env={**self.image_env(pod, uid), **env},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **switch,
            )
        except OSError as exc:
            self.container_status(
                pod,
                {"waiting": {"reason": "RunContainerError", "message": str(exc)}},
            )
            return
        finally:
            log.close()
        self.procs[key] = proc
        pod["status"]["phase"] = "Running"
        self.container_status(pod, {"running": {"startedAt": now()}})
        self.set_condition(pod, "Ready", "True")
        self.set_condition(pod, "ContainersReady", "True")

    def tick(self) -> None:
        """One round of the scheduler and the kubelet."""
        for key, pod in list(self.pods.items()):
            st = pod["status"]
            if pod["metadata"].get("deletionTimestamp") or st["phase"] in (
                "Succeeded",
                "Failed",
            ):
                continue
            if not pod["spec"].get("nodeName"):
                reason = self.unschedulable_reason(pod)
                if reason:
                    self.set_condition(
                        pod,
                        "PodScheduled",
                        "False",
                        reason="Unschedulable",
                        message=reason,
                    )
                    self.stamp(pod)
                    continue
                pod["spec"]["nodeName"] = NODE
                st.update(
                    hostIP=POD_IP,
                    podIP=POD_IP,
                    podIPs=[{"ip": POD_IP}],
                    startTime=now(),
                )
                self.set_condition(pod, "PodScheduled", "True")
                self.stamp(pod)
            if key not in self.procs:
                before = json.dumps(st, sort_keys=True)
                self.start_container(key, pod)
                if json.dumps(st, sort_keys=True) != before:
                    self.stamp(pod)
                continue
            code = self.procs[key].poll()
            if code is not None:
                st["phase"] = "Succeeded" if code == 0 else "Failed"
                self.container_status(
                    pod,
                    {
                        "terminated": {
                            "exitCode": code,
                            "reason": "Completed" if code == 0 else "Error",
                            "startedAt": st.get("startTime"),
                            "finishedAt": now(),
                        }
                    },
                )
                self.set_condition(pod, "Ready", "False", reason="PodCompleted")
                self.stamp(pod)

    async def stop(self, key: tuple[str, str], grace: float) -> None:
        proc = self.procs.pop(key, None)
        if proc is not None:
            await stop_group(proc, grace)
        self.pods.pop(key, None)
        self.pull_failed.pop(key, None)
        for (ns, _name), secret in list(self.secrets.items()):
            if ns == key[0]:
                owners = secret["metadata"].get("ownerReferences") or []
                if any(o.get("kind") == "Pod" and o.get("name") == key[1] for o in owners):
                    self.secrets.pop((ns, secret["metadata"]["name"]), None)

    def shutdown(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


# -- validation ---------------------------------------------------------------------------


def pod_errors(pod: dict[str, Any]) -> list[str]:
    errors = []
    meta = pod.get("metadata") or {}
    name = meta.get("name") or ""
    if not name:
        errors.append("metadata.name: Required value: name or generateName is required")
    elif not DNS_SUBDOMAIN.match(name) or len(name) > 253:
        errors.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain')
    for value in (meta.get("labels") or {}).values():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            errors.append(
                f'metadata.labels: Invalid value: "{value}": a valid label must be an '
                "empty string or consist of alphanumeric characters, '-', '_' or '.'"
            )
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        errors.append("spec.containers: Required value")
    for i, c in enumerate(containers):
        where = f"spec.containers[{i}]"
        if not c.get("name"):
            errors.append(f"{where}.name: Required value")
        elif not DNS_LABEL.match(c["name"]):
            errors.append(f'{where}.name: Invalid value: "{c["name"]}": a lowercase RFC 1123 label')
        if not c.get("image"):
            errors.append(f"{where}.image: Required value")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for rname, value in (res.get(part) or {}).items():
                try:
                    amount = quantity(value)
                except ValueError as exc:
                    errors.append(
                        f'{where}.resources.{part}[{rname}]: Invalid value: "{value}": {exc}'
                    )
                    continue
                if rname not in NATIVE and amount != int(amount):
                    errors.append(
                        f"{where}.resources.{part}[{rname}]: Invalid value: "
                        f'"{value}": must be an integer'
                    )
        for rname, value in (res.get("requests") or {}).items():
            if rname in NATIVE:
                continue
            limit = (res.get("limits") or {}).get(rname)
            if limit is None:
                errors.append(
                    f"{where}.resources.limits: Required value: Limit must be set "
                    "for non overcommitable resources"
                )
            elif str(limit) != str(value):
                errors.append(
                    f'{where}.resources.requests[{rname}]: Invalid value: "{value}": '
                    "must be equal to " + f"{rname} limit of {limit}"
                )
        for j, var in enumerate(c.get("env") or []):
            if not var.get("name"):
                errors.append(f"{where}.env[{j}].name: Required value")
    return errors


# -- the API ----------------------------------------------------------------------------------


def make_app(cluster: Cluster, token: str) -> Starlette:
    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {token}"

    def guard(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            if not authorized(request):
                return status(401, "Unauthorized", "Unauthorized")
            ns = request.path_params.get("ns")
            if ns is not None and ns not in cluster.namespaces:
                return not_found("namespaces", ns)
            return await handler(request)

        return wrapped

    async def body_of(request: Request) -> Any:
        try:
            return json.loads(await request.body() or b"{}")
        except ValueError:
            return None

    def listing(kind: str, items: list[dict[str, Any]]) -> JSONResponse:
        out = []
        for item in items:
            item = copy.deepcopy(item)
            item.pop("kind", None)
            item.pop("apiVersion", None)
            out.append(item)
        return JSONResponse(
            {
                "kind": kind,
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(cluster.version)},
                "items": out,
            }
        )

    def select(store: dict, request: Request) -> list[dict[str, Any]]:
        ns = request.path_params.get("ns")
        selector = parse_selector(request.query_params.get("labelSelector", ""))
        return [
            obj
            for (obj_ns, _), obj in sorted(store.items())
            if (ns is None or obj_ns == ns) and selects(selector, obj["metadata"]["labels"])
        ]

    def lister(kind: str, store: dict) -> Any:
        async def handler(request: Request) -> Response:
            return listing(kind, select(store, request))

        return handler

    def reader(resource: str, store: dict) -> Any:
        async def handler(request: Request) -> Response:
            key = (request.path_params["ns"], request.path_params["name"])
            obj = store.get(key)
            return JSONResponse(obj) if obj else not_found(resource, key[1])

        return handler

    # pods

    async def create_pod(request: Request) -> Response:
        ns = request.path_params["ns"]
        pod = await body_of(request)
        if not isinstance(pod, dict):
            return status(400, "BadRequest", "the object provided is unrecognized")
        if pod.get("kind", "Pod") != "Pod":
            return status(
                400,
                "BadRequest",
                f"the API version in the data (v1) does not match "
                f"the expected kind Pod, got {pod.get('kind')}",
            )
        pod["metadata"] = cluster.new_meta(pod.get("metadata") or {}, ns)
        errors = pod_errors(pod)
        name = pod["metadata"].get("name", "")
        if errors:
            message = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
            return status(
                422,
                "Invalid",
                f'Pod "{name}" is invalid: {message}',
                name=name,
                kind="Pod",
            )
        if (ns, name) in cluster.pods:
            return status(
                409,
                "AlreadyExists",
                f'pods "{name}" already exists',
                name=name,
                kind="pods",
            )
        pod.update(kind="Pod", apiVersion="v1")
        spec = pod["spec"]
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        if account not in cluster.service_accounts:
            # the ServiceAccount admission plugin, before the pod is stored
            return status(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: error looking up service account '
                f'{ns}/{account}: serviceaccount "{account}" not found',
                name=name,
                kind="pods",
            )
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec["serviceAccountName"] = account
        pod["status"] = {"phase": "Pending", "qosClass": "Burstable"}
        cluster.stamp(pod)
        cluster.pods[(ns, name)] = pod
        return JSONResponse(pod, status_code=201)

    async def delete_pod(request: Request) -> Response:
        key = (request.path_params["ns"], request.path_params["name"])
        pod = cluster.pods.get(key)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return not_found("pods", key[1])
        options = await body_of(request) or {}
        grace = request.query_params.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        pod["metadata"]["deletionTimestamp"] = now()
        pod["metadata"]["deletionGracePeriodSeconds"] = int(grace)
        cluster.stamp(pod)
        asyncio.get_running_loop().create_task(cluster.stop(key, float(grace)))
        return JSONResponse(pod)

    async def pod_log(request: Request) -> Response:
        key = (request.path_params["ns"], request.path_params["name"])
        if key not in cluster.pods:
            return not_found("pods", key[1])
        try:
            with open(os.path.join(cluster.logdir, f"{key[0]}_{key[1]}.log"), "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            name = cluster.pods[key]["spec"]["containers"][0]["name"]
            return status(
                400,
                "BadRequest",
                f'container "{name}" in pod "{key[1]}" is waiting to start: ContainerCreating',
            )
        tail = request.query_params.get("tailLines")
        if tail:
            lines = lines[-int(tail) :]
        return PlainTextResponse("".join(line + "\n" for line in lines))

    # secrets

    def secret_data(secret: dict[str, Any]) -> None:
        string_data = secret.pop("stringData", None) or {}
        data = secret.setdefault("data", {}) or {}
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        secret["data"] = data

    async def create_secret(request: Request) -> Response:
        ns = request.path_params["ns"]
        secret = await body_of(request)
        if not isinstance(secret, dict):
            return status(400, "BadRequest", "the object provided is unrecognized")
        secret["metadata"] = cluster.new_meta(secret.get("metadata") or {}, ns)
        name = secret["metadata"].get("name", "")
        if not name or not DNS_SUBDOMAIN.match(name):
            return status(
                422,
                "Invalid",
                f'Secret "{name}" is invalid: metadata.name: Invalid value',
                name=name,
                kind="Secret",
            )
        if (ns, name) in cluster.secrets:
            return status(
                409,
                "AlreadyExists",
                f'secrets "{name}" already exists',
                name=name,
                kind="secrets",
            )
        secret.update(kind="Secret", apiVersion="v1")
        secret.setdefault("type", "Opaque")
        secret_data(secret)
        cluster.stamp(secret)
        cluster.secrets[(ns, name)] = secret
        return JSONResponse(secret, status_code=201)

    def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
        for k, v in patch.items():
            if v is None:
                target.pop(k, None)
            elif isinstance(v, dict) and isinstance(target.get(k), dict):
                merge(target[k], v)
            else:
                target[k] = v

    async def patch_secret(request: Request) -> Response:
        key = (request.path_params["ns"], request.path_params["name"])
        secret = cluster.secrets.get(key)
        if secret is None:
            return not_found("secrets", key[1])
        kind = request.headers.get("content-type", "").split(";")[0]
        if kind not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            return status(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an "
                "unknown format - accepted media types include: "
                "application/merge-patch+json, application/strategic-merge-patch+json",
            )
        patch = await body_of(request)
        if not isinstance(patch, dict):
            return status(400, "BadRequest", "the patch is not a JSON object")
        merge(secret, patch)
        secret_data(secret)
        cluster.stamp(secret)
        return JSONResponse(secret)

    async def delete_secret(request: Request) -> Response:
        key = (request.path_params["ns"], request.path_params["name"])
        secret = cluster.secrets.pop(key, None)
        if secret is None:
            return not_found("secrets", key[1])
        return status(200, "", "", name=key[1], kind="secrets", uid=secret["metadata"]["uid"])

    pods = "/api/v1/namespaces/{ns}/pods"
    secrets = "/api/v1/namespaces/{ns}/secrets"
    routes = [
        Route(pods, guard(create_pod), methods=["POST"]),
        Route(pods, guard(lister("PodList", cluster.pods)), methods=["GET"]),
        Route("/api/v1/pods", guard(lister("PodList", cluster.pods)), methods=["GET"]),
        Route(pods + "/{name}", guard(reader("pods", cluster.pods)), methods=["GET"]),
        Route(pods + "/{name}", guard(delete_pod), methods=["DELETE"]),
        Route(pods + "/{name}/log", guard(pod_log), methods=["GET"]),
        Route(secrets, guard(create_secret), methods=["POST"]),
        Route(secrets, guard(lister("SecretList", cluster.secrets)), methods=["GET"]),
        Route("/api/v1/secrets", guard(lister("SecretList", cluster.secrets)), methods=["GET"]),
        Route(
            secrets + "/{name}",
            guard(reader("secrets", cluster.secrets)),
            methods=["GET"],
        ),
        Route(secrets + "/{name}", guard(patch_secret), methods=["PATCH"]),
        Route(secrets + "/{name}", guard(delete_secret), methods=["DELETE"]),
    ]

    return Starlette(routes=routes, lifespan=ticking_lifespan(cluster.tick, cluster.shutdown))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--namespaces", default="default")
    parser.add_argument("--cpu", default="4")
    parser.add_argument("--memory", default="8Gi")
    parser.add_argument("--gpus", default="0")
    parser.add_argument("--unpullable-image", action="append")
    parser.add_argument(
        "--service-account",
        action="append",
        help="a service account of every namespace",
    )
    args = parser.parse_args()
    cluster = Cluster(args)
    uvicorn.run(
        make_app(cluster, args.token),
        host=args.host,
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
