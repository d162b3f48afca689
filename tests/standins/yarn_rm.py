"""A stand-in for a YARN ResourceManager with one NodeManager, for raygate's tests.

It serves, with the real paths, bodies and status codes:

**The YARN Services API** (``/app/v1/services``, served by a real RM when
``yarn.webapp.api-service.enable`` is true; ``--no-services-api`` answers 404 for it, as an
RM without it does):

* ``GET /app/v1/services/version`` → ``{"hadoop_version": ...}``;
* ``POST /app/v1/services`` with a service (``name``, ``version``, ``queue``,
  ``components[]`` with ``name``, ``number_of_containers``, ``launch_command``, ``resource
  {cpus, memory, additional{"yarn.io/gpu": {value, unit}}}``, ``restart_policy``,
  ``configuration.env``), validated as the API server does (required fields, types, the
  names' rule ``[a-z][a-z0-9-]*`` without ``_``, at most 63 characters, one and only one of
  profile or cpus+memory, ``cpus > 0``): 400 ``{"diagnostics"}`` for a bad one; a name the
  user already has, a component larger than the cluster's largest container, or a queue the
  scheduler does not know (``Failed to submit ... unknown queue``) are 500s with the API
  server's diagnostics; else 202 ``{"diagnostics": "Application ID: ...", "state":
  "ACCEPTED", "uri": ...}``;
* ``GET /app/v1/services/{name}`` (names are per user, as the service's definition lives
  in its owner's home): the service with ``id`` (its application), ``state`` (``ACCEPTED``
  while its AM waits to be placed, ``STARTED`` once the AM runs, ``STABLE`` when every
  container is ``READY``; ``STOPPED``/``SUCCEEDED``/``FAILED`` after), ``components[]``
  with ``containers[]`` (``id``, ``ip``, ``hostname``, ``bare_host``, ``state``,
  ``component_instance_name``, ``launch_time``); only ``name``, ``id`` and ``state`` while
  its application is not running, as the real one answers; 404 ``{"diagnostics": "Service
  x not found", "code": 404004}``;
* ``PUT /app/v1/services/{name}`` ``{"state": "STOPPED"}`` (stop) and ``DELETE`` (stop
  and destroy: 200 ``Successfully destroyed service x``, 400 ``Service x doesn't exist``).

Each service runs as one application (type ``yarn-service``) whose AM is played by the
stand-in: it registers (so the application turns ``RUNNING`` and is never expired) and
asks for each component's containers; a container larger than its queue's maximum
allocation fails the service with the scheduler's ``Invalid resource request`` message,
one the node has no room for waits (its component ``FLEXING``). A container runs its
``launch_command`` as a NodeManager does: a ``launch_container.sh`` that exports the
environment as ``export KEY="VALUE"`` (unescaped, as the NodeManager writes it) and runs
the command with ``1><LOG_DIR>/stdout 2><LOG_DIR>/stderr``. A container that exits is
started again per its ``restart_policy`` (``ALWAYS`` by default, ``ON_FAILURE``,
``NEVER``); once none will run again the service ends ``SUCCEEDED`` or ``FAILED``.

**The applications API** (``/ws/v1/cluster/apps``): new application, submit (an
application submission context), the application report, state and kill (``PUT
.../state {"state": "KILLED"}``), list by ``states``/``applicationTags``/``queue``/
``applicationTypes``. An application submitted this way whose AM container runs but never
registers over the AM-RM protocol stays ``ACCEPTED`` and is expired after
``--am-liveness-expiry`` seconds (``yarn.am.liveness-monitor.expiry-interval-ms``, 600 s
by default), its container killed and the application ``FAILED`` with the RM's
``ApplicationMaster ... timed out`` diagnostics. A queue named with ``--stuck-queue`` never
activates applications (its AM resource limit is zero). A queue the scheduler does not
know fails the application as the CapacityScheduler does.

**The scheduler** (``GET /ws/v1/cluster/scheduler``): a CapacityScheduler's ``root`` with
its leaf queues, each with its ``maximumAllocation`` (``--queue-max NAME=MB,VCORES``, else
the cluster's ``--max-memory``/``--max-vcores``/``--max-gpus``); with ``--scheduler-type
fairScheduler`` only its type (no queues for a client to check against).

**Security**: by default simple auth (``user.name`` is taken as given, else ``dr.who``).
With ``--keytab``/``--principal`` every request must carry ``Authorization: Negotiate``
with a Kerberos token for the stand-in's service principal (checked with GSSAPI against
the keytab), else 401 with ``WWW-Authenticate: Negotiate``; the caller is the token's
principal's short name, and ``doAs=<user>`` acts as that user only for a caller listed in
``--proxy-user`` (else 403, as Hadoop's proxy-user check answers).

Where it differs from a real RM: one node, one attempt, no local resources, no Docker, no
registry DNS, no delegation tokens, no readiness checks but the default one (a container
is ``READY`` once it runs), no flex, upgrade or lifetime calls.

Run (from tests/): ``python -m standins.yarn_rm --port P [--queues default,kernels
--stuck-queue full --am-liveness-expiry 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from standins import stop_group, ticking_lifespan

ACTIVE = ("NEW", "NEW_SAVING", "SUBMITTED", "ACCEPTED", "RUNNING")
NODE_HOST = "127.0.0.1"
NODE_HTTP = f"{NODE_HOST}:8042"
SERVICE_AM = (1024, 1)  # yarn.service.am-resource.memory (its default) / vcores
NAME_RULE = re.compile(r"[a-z][a-z0-9-]*")
ERROR_CODE_APP_NAME_INVALID = 404004  # RestApiConstants
GPU = "yarn.io/gpu"
NM_KILL_DELAY = 0.25  # yarn.nodemanager.sleep-delay-before-sigkill.ms, its default


def remote_exception(code: int, exception: str, message: str, java_class: str) -> JSONResponse:
    return JSONResponse(
        {
            "RemoteException": {
                "exception": exception,
                "message": message,
                "javaClassName": java_class,
            }
        },
        status_code=code,
    )


def bad_request(message: str) -> JSONResponse:
    return remote_exception(
        400, "BadRequestException", message, "org.apache.hadoop.yarn.webapp.BadRequestException"
    )


def not_found(app_id: str) -> JSONResponse:
    return remote_exception(
        404,
        "NotFoundException",
        f"java.lang.Exception: app with id: {app_id} not found",
        "org.apache.hadoop.yarn.webapp.NotFoundException",
    )


def service_status(http_status: int, diagnostics: str, **more: Any) -> JSONResponse:
    """The services API's error and status body (a ``ServiceStatus``, nulls left out)."""
    return JSONResponse({"diagnostics": diagnostics, **more}, status_code=http_status)


def stamp() -> str:
    return datetime.now().strftime("%a %b %d %H:%M:%S %z %Y")


class Invalid(ValueError):
    """A service definition the API server refuses (400)."""


def validate_name(name: Any) -> str:
    """The services API's rule for service and component names."""
    if not isinstance(name, str) or not name:
        raise Invalid("Name can not be empty!")
    if "_" in name:
        raise Invalid(
            f"Invalid format: {name}, can not use '_', as DNS hostname does not allow '_'. "
            "Use '-' Instead. "
        )
    if len(name) > 63:
        raise Invalid(f"Invalid format {name}, must be no more than 63 characters ")
    if not NAME_RULE.fullmatch(name):
        raise Invalid(f"Invalid format {name}: it must match [a-z][a-z0-9-]*")
    return name


def _typed(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise Invalid(f"Invalid value for {what}: {value!r}")
    return value


def validate_service(service: Any) -> dict[str, Any]:
    """A service definition checked as the API server does before it submits it."""
    if not isinstance(service, dict):
        raise Invalid("The service definition must be a JSON object")
    name = service.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid("Service name cannot be null or empty")
    version = _typed(service.get("version"), str, "version")
    if not version:
        raise Invalid(f"Version of service {name} is either empty or not provided")
    validate_name(name)
    _typed(service.get("queue"), str, "queue")
    _typed(service.get("lifetime"), int, "lifetime")
    components = _typed(service.get("components"), list, "components")
    if not components:
        raise Invalid(f"No component specified for {name}")
    seen: set[str] = set()
    for comp in components:
        if not isinstance(comp, dict):
            raise Invalid("Each component must be a JSON object")
        cname = comp.get("name")
        if cname in seen:
            raise Invalid(f"Component name collision: {cname}")
        validate_name(cname)
        seen.add(cname)
        if not isinstance(comp.get("launch_command"), str):
            raise Invalid("launch_command is required for a component without a docker artifact")
        resource = comp.get("resource") or service.get("resource")
        if not isinstance(resource, dict):
            raise Invalid(f"Resource of component {cname} is not provided")
        if resource.get("profile") and (resource.get("cpus") is not None or resource.get("memory")):
            raise Invalid(f"Cannot specify cpus/memory along with profile for component {cname}")
        if resource.get("profile"):
            raise Invalid("Resource profile is not supported yet. Please specify cpus/memory.")
        memory = _typed(resource.get("memory"), str, f"memory of component {cname}")
        if not memory or not memory.isdigit():
            raise Invalid(f"Resource memory of component {cname} is either empty or invalid")
        cpus = _typed(resource.get("cpus"), int, f"cpus of component {cname}")
        if cpus is None:
            raise Invalid(f"Resource cpus of component {cname} is not provided")
        if cpus <= 0:
            raise Invalid(f"Invalid number of cpus specified for component {cname}: {cpus}")
        for rname, info in (_typed(resource.get("additional"), dict, "additional") or {}).items():
            if not isinstance(info, dict) or not isinstance(info.get("value"), int):
                raise Invalid(f"Invalid resource information for {rname}: {info!r}")
        count = _typed(comp.get("number_of_containers"), int, "number_of_containers")
        if count is None or count < 0:
            raise Invalid(f"Invalid no of containers specified for component {cname}: {count}")
        policy = comp.get("restart_policy", "ALWAYS")
        if policy not in ("ALWAYS", "ON_FAILURE", "NEVER"):
            raise Invalid(f"Invalid restart_policy {policy!r} of component {cname}")
        configuration = _typed(comp.get("configuration"), dict, "configuration") or {}
        env = _typed(configuration.get("env"), dict, "configuration.env") or {}
        if not all(isinstance(v, str) for v in env.values()):
            raise Invalid(f"configuration.env of component {cname} must map names to strings")
        if comp.get("containers"):
            raise Invalid("containers may not be specified when a service is created")
    return service


def component_size(comp: dict[str, Any], service: dict[str, Any]) -> tuple[int, int, int]:
    resource = comp.get("resource") or service.get("resource") or {}
    gpus = ((resource.get("additional") or {}).get(GPU) or {}).get("value", 0)
    return int(resource["memory"]), int(resource["cpus"]), int(gpus)


def resource_info(memory: int, vcores: int, gpus: int) -> dict[str, Any]:
    """A ``ResourceInfo`` as the RM's REST API writes it."""
    infos = [
        {"name": "memory-mb", "value": memory, "units": "Mi", "resourceType": "COUNTABLE"},
        {"name": "vcores", "value": vcores, "units": "", "resourceType": "COUNTABLE"},
        {"name": GPU, "value": gpus, "units": "", "resourceType": "COUNTABLE"},
    ]
    return {
        "memory": memory,
        "vCores": vcores,
        "resourceInformations": {"resourceInformation": infos},
    }


class ResourceManager:
    def __init__(self, args: argparse.Namespace) -> None:
        self.cluster_ts = int(time.time() * 1000)
        self.counter = 0
        self.max = (args.max_memory, args.max_vcores, args.max_gpus)
        self.node = (args.node_memory, args.node_vcores, args.node_gpus)
        self.queues = list(dict.fromkeys(args.queues.split(",") + list(args.stuck_queue or [])))
        self.stuck = set(args.stuck_queue or [])
        self.queue_max: dict[str, tuple[int, int, int]] = {}
        for spec in args.queue_max or []:
            queue, _, size = spec.partition("=")
            mb, vc = size.split(",")
            self.queue_max[queue] = (int(mb), int(vc), self.max[2])
        self.new_ids: set[str] = set()
        self.apps: dict[str, dict[str, Any]] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        """AM containers of applications submitted through the applications API."""
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        """Services by (owner, name)."""
        self.root = tempfile.mkdtemp(prefix="yarn-standin-")
        self.am_registers = args.am_registers
        self.liveness_expiry = args.am_liveness_expiry
        self.services_api = args.services_api
        self.scheduler_type = args.scheduler_type

    # -- ids and capacity --

    def next_app_id(self) -> str:
        self.counter += 1
        app_id = f"application_{self.cluster_ts}_{self.counter:04d}"
        self.new_ids.add(app_id)
        return app_id

    def new_application(self) -> dict[str, Any]:
        return {
            "application-id": self.next_app_id(),
            "maximum-resource-capability": {"memory": self.max[0], "vCores": self.max[1]},
        }

    def used(self) -> tuple[int, int, int]:
        """What running containers hold of the node."""
        held = [self.apps[app_id]["_size"] for app_id in self.procs]
        for service in self.services.values():
            for container in service["_containers"]:
                if container["_proc"] is not None:
                    held.append(container["_size"])
            if service["_am_running"]:
                held.append((*SERVICE_AM, 0))
        return (
            sum(h[0] for h in held),
            sum(h[1] for h in held),
            sum(h[2] for h in held),
        )

    def fits(self, size: tuple[int, int, int]) -> bool:
        used = self.used()
        return all(u + s <= n for u, s, n in zip(used, size, self.node))

    def new_app(self, app_id: str, user: str, name: str, queue: str, kind: str) -> dict[str, Any]:
        now = int(time.time() * 1000)
        app = {
            "id": app_id,
            "user": user,
            "name": name,
            "queue": queue,
            "state": "ACCEPTED",
            "finalStatus": "UNDEFINED",
            "progress": 0.0,
            "trackingUI": "UNASSIGNED",
            "diagnostics": "",
            "clusterId": self.cluster_ts,
            "applicationType": kind,
            "applicationTags": "",
            "priority": 0,
            "startedTime": now,
            "launchTime": 0,
            "finishedTime": 0,
            "elapsedTime": 0,
            "amHostHttpAddress": "",
            "allocatedMB": -1,
            "allocatedVCores": -1,
            "runningContainers": -1,
            "unmanagedApplication": False,
        }
        self.new_ids.discard(app_id)
        if queue not in self.queues:
            app.update(
                state="FAILED",
                finalStatus="FAILED",
                finishedTime=now,
                diagnostics=f"Application {app_id} submitted by user {user} to unknown queue: "
                f"{queue}",
            )
        self.apps[app_id] = app
        return app

    # -- the applications API --

    def submit(self, ctx: dict[str, Any], user: str) -> str | None:
        """Accept a submission; returns an error message for a 400, else None."""
        app_id = ctx.get("application-id")
        if app_id not in self.new_ids:
            return f"Invalid ApplicationId specified: {app_id}"
        spec = ctx.get("am-container-spec") or {}
        command = (spec.get("commands") or {}).get("command")
        if not command:
            return "AM container spec has no command"
        resource = ctx.get("resource") or {}
        memory, vcores = int(resource.get("memory", 1024)), int(resource.get("vCores", 1))
        if memory > self.max[0] or vcores > self.max[1] or memory <= 0 or vcores <= 0:
            return (
                "Invalid resource request, requested resource type=[memory-mb] < 0 or greater "
                f"than maximum allowed allocation. Requested resource=<memory:{memory}, "
                f"vCores:{vcores}>, maximum allowed allocation=<memory:{self.max[0]}, "
                f"vCores:{self.max[1]}>"
            )
        tags = (ctx.get("application-tags") or {}).get("tag") or []
        if isinstance(tags, str):
            tags = [tags]
        env = {
            e["key"]: str(e["value"]) for e in (spec.get("environment") or {}).get("entry") or []
        }
        app = self.new_app(
            app_id,
            user,
            ctx.get("application-name") or "",
            ctx.get("queue") or "default",
            ctx.get("application-type") or "YARN",
        )
        app.update(
            applicationTags=",".join(t.lower() for t in tags),
            _size=(memory, vcores, 0),
            _command=command,
            _env=env,
        )
        return None

    def try_launch_am(self, app_id: str, app: dict[str, Any]) -> bool:
        """Place an application's AM container if its queue and the node allow; the
        diagnostics say why not."""
        memory, vcores = app["_size"][:2]
        request = f"<memory:{memory}, vCores:{vcores}>"
        if app["queue"] in self.stuck:
            app["diagnostics"] = (
                f"[{stamp()}] Application is added to the scheduler and is not yet activated. "
                "Queue's AM resource limit exceeded. Details : AM Partition = "
                f"<DEFAULT_PARTITION>; AM Resource Request = {request}; Queue Resource Limit "
                "for AM = <memory:0, vCores:0>; User AM Resource Limit of the queue = "
                "<memory:0, vCores:0>; Queue AM Resource Usage = <memory:0, vCores:0>; "
            )
            return False
        if not self.fits(app["_size"]):
            app["diagnostics"] = (
                f"[{stamp()}] Application is Activated, waiting for resources to be assigned "
                "for AM. Details : AM Partition = <DEFAULT_PARTITION> ; Partition Resource = "
                f"<memory:{self.node[0]}, vCores:{self.node[1]}> ; AM Resource Request = "
                f"{request} ; "
            )
            return False
        app.update(
            launchTime=int(time.time() * 1000),
            amHostHttpAddress=NODE_HTTP,
            amContainerLogs=f"http://{NODE_HTTP}/node/containerlogs/{app_id}",
            allocatedMB=memory,
            allocatedVCores=vcores,
            runningContainers=1,
            diagnostics=f"[{stamp()}] AM container is launched, waiting for AM container to "
            "Register with RM",
        )
        return True

    def tick_app(self, app_id: str, app: dict[str, Any]) -> None:
        if app_id in self.procs:
            code = self.procs[app_id].poll()
            if code is not None:
                self.procs.pop(app_id)
                self.finish(app, code)
            elif (
                app["state"] == "ACCEPTED"
                and time.time() * 1000 - app["launchTime"] > self.liveness_expiry * 1000
            ):
                # AMLivenessMonitor: the attempt never registered (heartbeat) in time
                self.kill_now(self.procs.pop(app_id))
                self.release(
                    app,
                    "FAILED",
                    "FAILED",
                    f"Application {app_id} failed 1 times (global limit =2; local limit is =1) "
                    f"due to ApplicationMaster for attempt appattempt_{app_id[12:]}_000001 timed "
                    "out. Failing the application.",
                )
        elif app["state"] == "ACCEPTED" and self.try_launch_am(app_id, app):
            logdir = os.path.join(self.root, app_id)
            try:
                self.procs[app_id] = self.run_container(
                    logdir, app["_command"], app["_env"], f"container_{app_id[12:]}_01_000001"
                )
            except OSError as exc:
                self.release(app, "FAILED", "FAILED", str(exc))
                return
            if self.am_registers:
                app.update(state="RUNNING", trackingUI="ApplicationMaster", diagnostics="")

    def finish(self, app: dict[str, Any], code: int) -> None:
        state, final = ("FINISHED", "SUCCEEDED") if code == 0 else ("FAILED", "FAILED")
        diagnostics = ""
        if code:
            diagnostics = (
                f"Application {app['id']} failed 1 times due to AM Container for "
                f"appattempt_{app['id'][12:]}_000001 exited with  exitCode: {code}. Failing "
                "this attempt. Failing the application."
            )
        self.release(app, state, final, diagnostics)

    def release(self, app: dict[str, Any], state: str, final: str, diagnostics: str) -> None:
        now = int(time.time() * 1000)
        app.update(
            state=state,
            finalStatus=final,
            diagnostics=diagnostics,
            finishedTime=now,
            elapsedTime=now - app["startedTime"],
            allocatedMB=-1,
            allocatedVCores=-1,
            runningContainers=-1,
        )

    async def kill(self, app_id: str) -> None:
        app = self.apps[app_id]
        proc = self.procs.pop(app_id, None)
        if proc is not None:
            await stop_group(proc, NM_KILL_DELAY)
        service = next((s for s in self.services.values() if s["id"] == app_id), None)
        if service is not None:
            await self.stop_service(service)
        self.release(app, "KILLED", "KILLED", f"Application killed by user {app['user']}.")

    # -- containers, as a NodeManager runs them --

    def run_container(
        self, logdir: str, command: str, env: dict[str, str], container_id: str
    ) -> subprocess.Popen:
        os.makedirs(logdir, exist_ok=True)
        env = {**env, "CONTAINER_ID": container_id, "LOG_DIRS": logdir}
        script = ["#!/bin/bash", ""]
        # as the NodeManager writes it: values in double quotes, nothing escaped
        script += [f'export {key}="{value}"' for key, value in env.items()]
        script.append('exec /bin/bash -c "' + command.replace("<LOG_DIR>", logdir) + '"')
        path = os.path.join(logdir, "launch_container.sh")
        with open(path, "w") as f:
            f.write("\n".join(script) + "\n")
        return subprocess.Popen(
            ["bash", path],
            env={k: v for k, v in os.environ.items() if not k.startswith("RAYGATE_")},
            cwd=logdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @staticmethod
    def kill_now(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    # -- the services API --

    def create_service(self, spec: dict[str, Any], user: str) -> JSONResponse:
        name = spec["name"]
        if (user, name) in self.services:
            return service_status(500, f"Service name {name} is already taken.")
        for comp in spec["components"]:
            memory, vcores, _gpus = component_size(comp, spec)
            cname = comp["name"]
            if memory > self.max[0]:
                return service_status(
                    500,
                    f"Component {cname}: specified memory size ({memory}) is larger than "
                    f"configured max container memory size ({self.max[0]})",
                )
            if vcores > self.max[1]:
                return service_status(
                    500,
                    f"Component {cname}: specified number of virtual core ({vcores}) is larger "
                    f"than configured max virtual core size ({self.max[1]})",
                )
        queue = spec.get("queue") or "default"
        app_id = self.next_app_id()
        app = self.new_app(app_id, user, name, queue, "yarn-service")
        app.update(
            applicationTags=f"name: {name},version: {spec['version']}",
            _size=(*SERVICE_AM, 0),
        )
        if app["state"] == "FAILED":  # what YarnClient.submitApplication throws
            return service_status(500, f"Failed to submit {app_id} to YARN : {app['diagnostics']}")
        self.services[(user, name)] = {
            "name": name,
            "id": app_id,
            "user": user,
            "spec": spec,
            "state": "ACCEPTED",
            "launch_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "_am_running": False,
            "_containers": [],
            "_next_instance": {c["name"]: 0 for c in spec["components"]},
            "_seq": 1,
        }
        return service_status(
            202,
            f"Application ID: {app_id}",
            state="ACCEPTED",
            uri=f"/app/v1/services/{name}",
        )

    def tick_service(self, service: dict[str, Any]) -> None:
        app = self.apps[service["id"]]
        if app["state"] not in ACTIVE:
            return
        if not service["_am_running"]:
            if not self.try_launch_am(service["id"], app):
                return
            # the service AM registers: RUNNING, and the liveness monitor is satisfied
            service["_am_running"] = True
            app.update(state="RUNNING", trackingUI="ApplicationMaster", diagnostics="")
            service["state"] = "STARTED"
        pending = 0
        for comp in service["spec"]["components"]:
            pending += self.tick_component(service, comp)
            if app["state"] not in ACTIVE:
                return
        live = [c for c in service["_containers"] if c["_proc"] is not None]
        if not live and not pending:
            self.end_service(service)
        elif not pending and all(c["state"] == "READY" for c in live):
            service["state"] = "STABLE"
        else:
            service["state"] = "STARTED"

    def tick_component(self, service: dict[str, Any], comp: dict[str, Any]) -> int:
        """Restart, ask for and place a component's containers; how many it still waits
        for."""
        size = component_size(comp, service["spec"])
        cname = comp["name"]
        queue = service["spec"].get("queue") or "default"
        mine = [c for c in service["_containers"] if c["_component"] == cname]
        for container in mine:
            proc = container["_proc"]
            if proc is None or proc.poll() is None:
                continue
            code = proc.returncode
            container["_proc"] = None
            policy = comp.get("restart_policy", "ALWAYS")
            again = policy == "ALWAYS" or (policy == "ON_FAILURE" and code != 0)
            container["state"] = "SUCCEEDED" if code == 0 else "FAILED"
            container["_exit"] = code
            container["_restart"] = again
        wanted = int(comp["number_of_containers"])
        running = [c for c in mine if c["_proc"] is not None]
        done = [c for c in mine if c["_proc"] is None and not c.get("_restart")]
        to_start = wanted - len(running) - len(done)
        limit = self.queue_max.get(queue, self.max)
        if to_start > 0 and any(s > m for s, m in zip(size, limit)):
            app = self.apps[service["id"]]
            self.stop_service_now(service)
            self.release(
                app,
                "FINISHED",
                "FAILED",
                "Invalid resource request! Cannot allocate containers as requested resource is "
                f"greater than maximum allowed allocation. Requested resource type=[memory-mb], "
                f"Requested resource=<memory:{size[0]}, vCores:{size[1]}>, maximum allowed "
                f"allocation=<memory:{limit[0]}, vCores:{limit[1]}>, please note that maximum "
                "allowed allocation is calculated by scheduler based on maximum resource of "
                "registered NodeManagers, which might be less than configured maximum "
                f"allocation=<memory:{self.max[0]}, vCores:{self.max[1]}>",
            )
            service["state"] = "FAILED"
            return 0
        for started in range(max(0, to_start)):
            if not self.fits(size):
                comp["state"] = "FLEXING"
                return to_start - started
            self.start_container(service, comp, size)
        comp["state"] = "STABLE"
        return 0

    def start_container(
        self, service: dict[str, Any], comp: dict[str, Any], size: tuple[int, int, int]
    ) -> None:
        cname = comp["name"]
        restarted = next(
            (c for c in service["_containers"] if c["_component"] == cname and c.get("_restart")),
            None,
        )
        if restarted is not None:
            service["_containers"].remove(restarted)
            instance = restarted["component_instance_name"]
        else:
            instance = f"{cname}-{service['_next_instance'][cname]}"
            service["_next_instance"][cname] += 1
        service["_seq"] += 1
        container_id = f"container_{service['id'][12:]}_01_{service['_seq']:06d}"
        env = dict(((comp.get("configuration") or {}).get("env")) or {})
        logdir = os.path.join(self.root, service["id"], container_id)
        proc = self.run_container(
            logdir,
            comp["launch_command"] + " 1><LOG_DIR>/stdout 2><LOG_DIR>/stderr",
            env,
            container_id,
        )
        service["_containers"].append(
            {
                "id": container_id,
                "ip": NODE_HOST,
                "hostname": NODE_HOST,
                "bare_host": NODE_HOST,
                "state": "READY",  # the default readiness check: the container has an IP
                "component_instance_name": instance,
                "launch_time": int(time.time() * 1000),
                "resource": comp.get("resource"),
                "_component": cname,
                "_proc": proc,
                "_size": size,
            }
        )

    def end_service(self, service: dict[str, Any]) -> None:
        """No container runs or will run again: the AM unregisters."""
        app = self.apps[service["id"]]
        failed = any(c.get("_exit") for c in service["_containers"])
        service["_am_running"] = False
        service["state"] = "FAILED" if failed else "SUCCEEDED"
        self.release(app, "FINISHED", "FAILED" if failed else "SUCCEEDED", "")

    def stop_service_now(self, service: dict[str, Any]) -> None:
        for container in service["_containers"]:
            if container["_proc"] is not None:
                self.kill_now(container["_proc"])
                container["_proc"] = None
        service["_am_running"] = False

    async def stop_service(self, service: dict[str, Any]) -> None:
        procs = [c["_proc"] for c in service["_containers"] if c["_proc"] is not None]
        for container in service["_containers"]:
            container["_proc"] = None
            container["state"] = "STOPPED"
        service["_am_running"] = False
        await asyncio.gather(*(stop_group(p, NM_KILL_DELAY) for p in procs))
        app = self.apps[service["id"]]
        if app["state"] in ACTIVE:
            self.release(app, "FINISHED", "ENDED", "")
        service["state"] = "STOPPED"

    def describe(self, service: dict[str, Any]) -> dict[str, Any]:
        """The service as GET answers: its definition and live containers while its
        application runs, else only its name, id and state."""
        app = self.apps[service["id"]]
        if app["state"] != "RUNNING":
            state = service["state"] if app["state"] not in ACTIVE else "ACCEPTED"
            return {"name": service["name"], "id": service["id"], "state": state}
        spec = service["spec"]
        components = []
        for comp in spec["components"]:
            containers = [
                {k: v for k, v in c.items() if not k.startswith("_")}
                for c in service["_containers"]
                if c["_component"] == comp["name"] and c["_proc"] is not None
            ]
            components.append(
                {
                    **comp,
                    "state": comp.get("state", "FLEXING"),
                    "containers": containers,
                }
            )
        running = sum(len(c["containers"]) for c in components)
        return {
            **spec,
            "id": service["id"],
            "state": service["state"],
            "launch_time": service["launch_time"],
            "number_of_running_containers": running,
            "components": components,
            "queue": spec.get("queue") or "default",
        }

    # -- the node --

    def tick(self) -> None:
        for app_id, app in list(self.apps.items()):
            if app["applicationType"] != "yarn-service":
                self.tick_app(app_id, app)
        for service in list(self.services.values()):
            self.tick_service(service)

    def scheduler(self) -> dict[str, Any]:
        if self.scheduler_type != "capacityScheduler":  # lists no CapacityScheduler queues
            return {"scheduler": {"schedulerInfo": {"type": self.scheduler_type}}}
        queues = [
            {
                "type": "capacitySchedulerLeafQueueInfo",
                "queueName": queue,
                "queuePath": f"root.{queue}",
                "state": "RUNNING",
                "maximumAllocation": resource_info(*self.queue_max.get(queue, self.max)),
            }
            for queue in self.queues
        ]
        return {
            "scheduler": {
                "schedulerInfo": {
                    "type": "capacityScheduler",
                    "queueName": "root",
                    "queuePath": "root",
                    "maximumAllocation": resource_info(*self.max),
                    "queues": {"queue": queues},
                }
            }
        }

    def shutdown(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for service in self.services.values():
            self.stop_service_now(service)


class Kerberos:
    """SPNEGO as a Kerberized RM checks it: the Negotiate token accepted against the
    service principal's keytab; ``doAs`` only for the proxy users."""

    def __init__(self, keytab: str, principal: str, proxy_users: list[str]) -> None:
        import gssapi  # only a Kerberized stand-in needs it

        self.gssapi = gssapi
        name = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
        self.creds = gssapi.Credentials(name=name, usage="accept", store={"keytab": keytab})
        self.proxy_users = set(proxy_users)

    def user(self, request: Request) -> tuple[str | None, Response | None]:
        """The authenticated user (the one acted as, with doAs), or the response that
        refuses the request."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "negotiate" or not token:
            return None, PlainTextResponse(
                "Authentication required", 401, headers={"WWW-Authenticate": "Negotiate"}
            )
        try:
            ctx = self.gssapi.SecurityContext(creds=self.creds, usage="accept")
            ctx.step(base64.b64decode(token))
            principal = str(ctx.initiator_name)
        except (self.gssapi.exceptions.GSSError, ValueError) as exc:
            return None, PlainTextResponse(
                f"Authentication failed: {exc}", 403, headers={"WWW-Authenticate": "Negotiate"}
            )
        short = principal.split("@")[0].split("/")[0]
        do_as = request.query_params.get("doAs")
        if do_as and do_as != short:
            if short not in self.proxy_users:
                return None, remote_exception(
                    403,
                    "AuthorizationException",
                    f"User: {principal} is not allowed to impersonate {do_as}",
                    "org.apache.hadoop.security.authorize.AuthorizationException",
                )
            return do_as, None
        return short, None


def public(app: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in app.items() if not k.startswith("_")}


def make_app(rm: ResourceManager, kerberos: Kerberos | None = None) -> Starlette:
    def caller(request: Request) -> tuple[str | None, Response | None]:
        if kerberos is not None:
            return kerberos.user(request)
        return request.query_params.get("user.name") or "dr.who", None

    def authenticated(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            user, refusal = caller(request)
            if refusal is not None:
                return refusal
            request.state.user = user
            return await handler(request)

        return wrapped

    def services_only(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            if not rm.services_api:  # the RM serves no /app/v1 at all
                return PlainTextResponse("Not Found", 404)
            return await authenticated(handler)(request)

        return wrapped

    async def new_application(request: Request) -> Response:
        return JSONResponse(rm.new_application())

    async def submit(request: Request) -> Response:
        try:
            ctx = await request.json()
        except ValueError:
            return bad_request("The submitted application context is not valid JSON")
        if not isinstance(ctx, dict):
            return bad_request("The submitted application context is not an object")
        error = rm.submit(ctx, request.state.user)
        if error:
            return bad_request(error)
        location = f"{request.base_url}ws/v1/cluster/apps/{ctx['application-id']}"
        return Response(status_code=202, headers={"Location": location})

    async def list_apps(request: Request) -> Response:
        q = request.query_params
        states = {s.strip().upper() for s in q.get("states", "").split(",") if s.strip()}
        tags = {t.strip().lower() for t in q.get("applicationTags", "").split(",") if t.strip()}
        types = {t.strip() for t in q.get("applicationTypes", "").split(",") if t.strip()}
        apps = [
            public(a)
            for a in rm.apps.values()
            if (not states or a["state"] in states)
            and (not tags or tags & set(a["applicationTags"].split(",")))
            and (not types or a["applicationType"] in types)
            and (not q.get("queue") or a["queue"] == q["queue"])
            and (not q.get("user") or a["user"] == q["user"])
        ]
        return JSONResponse({"apps": {"app": apps} if apps else None})

    async def get_app(request: Request) -> Response:
        app = rm.apps.get(request.path_params["app_id"])
        return (
            JSONResponse({"app": public(app)}) if app else not_found(request.path_params["app_id"])
        )

    async def get_state(request: Request) -> Response:
        app = rm.apps.get(request.path_params["app_id"])
        if app is None:
            return not_found(request.path_params["app_id"])
        return JSONResponse({"state": app["state"]})

    async def put_state(request: Request) -> Response:
        app_id = request.path_params["app_id"]
        app = rm.apps.get(app_id)
        if app is None:
            return not_found(app_id)
        try:
            target = (await request.json()).get("state")
        except (ValueError, AttributeError):
            return bad_request('The body must be {"state": "KILLED"}')
        if target != "KILLED":
            return bad_request("Only 'KILLED' is allowed as a target state.")
        if app["state"] not in ACTIVE:
            return JSONResponse({"state": app["state"]})
        before = app["state"]
        asyncio.get_running_loop().create_task(rm.kill(app_id))
        return JSONResponse({"state": before}, status_code=202)

    async def scheduler(request: Request) -> Response:
        return JSONResponse(rm.scheduler())

    async def version(request: Request) -> Response:
        return JSONResponse({"hadoop_version": "3.4.1 (stand-in)"})

    async def create_service(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return service_status(400, "The service definition is not valid JSON")
        try:
            spec = validate_service(body)
        except Invalid as exc:
            return service_status(400, str(exc))
        return rm.create_service(spec, request.state.user)

    def find_service(request: Request) -> tuple[str, dict[str, Any] | None]:
        name = request.path_params["name"]
        return name, rm.services.get((request.state.user, name))

    async def get_service(request: Request) -> Response:
        name, service = find_service(request)
        try:
            validate_name(name)
        except Invalid as exc:
            return service_status(404, str(exc), code=ERROR_CODE_APP_NAME_INVALID)
        if service is None:
            return service_status(
                404, f"Service {name} not found", code=ERROR_CODE_APP_NAME_INVALID
            )
        return JSONResponse(rm.describe(service))

    async def update_service(request: Request) -> Response:
        name, service = find_service(request)
        if service is None:
            return service_status(404, f"Service {name} not found")
        try:
            body = await request.json()
        except ValueError:
            return service_status(400, "The service definition is not valid JSON")
        if not isinstance(body, dict):
            return service_status(400, "The service definition must be a JSON object")
        if body.get("state") == "STOPPED":
            if service["state"] in ("STOPPED", "SUCCEEDED", "FAILED"):
                return service_status(400, f"Service {name} is already stopped")
            await rm.stop_service(service)
            return service_status(200, f"Successfully stopped service {name}")
        return Response(status_code=204)  # nothing this stand-in does

    async def delete_service(request: Request) -> Response:
        name, service = find_service(request)
        if service is None:
            return service_status(400, f"Service {name} doesn't exist")
        await rm.stop_service(service)
        rm.services.pop((request.state.user, name), None)
        return service_status(200, f"Successfully destroyed service {name}")

    apps = "/ws/v1/cluster/apps"
    services = "/app/v1/services"
    routes = [
        Route(apps + "/new-application", authenticated(new_application), methods=["POST"]),
        Route(apps, authenticated(submit), methods=["POST"]),
        Route(apps, authenticated(list_apps), methods=["GET"]),
        Route(apps + "/{app_id}", authenticated(get_app), methods=["GET"]),
        Route(apps + "/{app_id}/state", authenticated(get_state), methods=["GET"]),
        Route(apps + "/{app_id}/state", authenticated(put_state), methods=["PUT"]),
        Route("/ws/v1/cluster/scheduler", authenticated(scheduler), methods=["GET"]),
        Route(services + "/version", services_only(version), methods=["GET"]),
        Route(services, services_only(create_service), methods=["POST"]),
        Route(services + "/{name}", services_only(get_service), methods=["GET"]),
        Route(services + "/{name}", services_only(update_service), methods=["PUT"]),
        Route(services + "/{name}", services_only(delete_service), methods=["DELETE"]),
    ]

    return Starlette(routes=routes, lifespan=ticking_lifespan(rm.tick, rm.shutdown))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queues", default="default")
    parser.add_argument("--stuck-queue", action="append")
    parser.add_argument("--queue-max", action="append", help="QUEUE=MB,VCORES")
    parser.add_argument("--max-memory", type=int, default=8192)
    parser.add_argument("--max-vcores", type=int, default=8)
    parser.add_argument("--max-gpus", type=int, default=0)
    parser.add_argument("--node-memory", type=int, default=16384)
    parser.add_argument("--node-vcores", type=int, default=16)
    parser.add_argument("--node-gpus", type=int, default=0)
    parser.add_argument("--am-registers", action="store_true")
    parser.add_argument("--am-liveness-expiry", type=float, default=600.0)
    parser.add_argument(
        "--no-services-api", dest="services_api", action="store_false", default=True
    )
    parser.add_argument("--scheduler-type", default="capacityScheduler", help="e.g. fairScheduler")
    parser.add_argument("--keytab", default="")
    parser.add_argument("--principal", default="")
    parser.add_argument("--proxy-user", action="append", default=[])
    args = parser.parse_args()
    kerberos = Kerberos(args.keytab, args.principal, args.proxy_user) if args.keytab else None
    uvicorn.run(
        make_app(ResourceManager(args), kerberos),
        host=args.host,
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
