"""A stand-in for a YARN ResourceManager with one NodeManager, for raygate's tests.

It serves the ResourceManager REST API calls a YARN client makes to run an application,
with the real paths, bodies and status codes:

* ``POST /ws/v1/cluster/apps/new-application`` → ``application-id`` and
  ``maximum-resource-capability`` (``--max-memory`` MB, ``--max-vcores``);
* ``POST /ws/v1/cluster/apps`` (an application submission context: ``application-id``,
  ``application-name``, ``queue``, ``am-container-spec`` with ``commands.command`` and
  ``environment.entry``, ``resource {memory, vCores}``, ``application-type``,
  ``application-tags.tag``) → 202 with a ``Location``; 400 ``RemoteException`` for a bad
  one;
* ``GET /ws/v1/cluster/apps/{id}`` (the application report: ``state``, ``finalStatus``,
  ``diagnostics``, ``queue``, ``user``, ``applicationTags``, ``amHostHttpAddress``,
  ``allocatedMB``, ``allocatedVCores``, ...), ``GET .../state``, ``PUT .../state``
  ``{"state": "KILLED"}`` (202 while it is being killed, 200 once final), 404
  ``NotFoundException``;
* ``GET /ws/v1/cluster/apps?states=...&applicationTags=...&queue=...`` (``{"apps": null}``
  when none match).

An accepted application gets its AM container when its queue may run one and the node
(``--node-memory`` MB, ``--node-vcores``) has room; the container's command runs here
through ``bash -c`` with the submitted environment, ``<LOG_DIR>`` replaced by the
container's log directory. A queue named with ``--stuck-queue`` never activates
applications (its AM resource limit is zero), so they stay ``ACCEPTED`` with the
scheduler's diagnostics. A queue the RM does not know fails the application as the
CapacityScheduler does.

As on a real RM, an application whose AM container runs stays ``ACCEPTED`` (with its AM
host, allocation and "waiting for AM container to Register with RM" in its report) until
its AM registers over the AM-RM protocol; raygate's bootstrap does not register, so its
applications never turn ``RUNNING`` (``--am-registers`` makes the stand-in act as if every
AM registered once its container runs, for a client that needs ``RUNNING``). An AM that
exits ends the application ``FINISHED``/``FAILED`` by exit code.

Where it differs from a real RM: it does not expire an AM that never registers
(``yarn.am.liveness-monitor.expiry-interval-ms``, 10 minutes by default). No security
(``user.name`` is taken as given), no local resources, one attempt.

Run (from tests/): ``python -m standins.yarn_rm --port P [--queues default,kernels --stuck-queue full]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from datetime import datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from standins import ticking_lifespan

ACTIVE = ("NEW", "NEW_SAVING", "SUBMITTED", "ACCEPTED", "RUNNING")
NODE_HTTP = "127.0.0.1:8042"


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


class ResourceManager:
    def __init__(self, args: argparse.Namespace) -> None:
        self.cluster_ts = int(time.time() * 1000)
        self.counter = 0
        self.max_memory, self.max_vcores = args.max_memory, args.max_vcores
        self.node_memory, self.node_vcores = args.node_memory, args.node_vcores
        self.queues = set(args.queues.split(","))
        self.stuck = set(args.stuck_queue or [])
        self.queues |= self.stuck
        self.new_ids: set[str] = set()
        self.apps: dict[str, dict[str, Any]] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.root = tempfile.mkdtemp(prefix="yarn-standin-")
        self.am_registers = args.am_registers

    def new_application(self) -> dict[str, Any]:
        self.counter += 1
        app_id = f"application_{self.cluster_ts}_{self.counter:04d}"
        self.new_ids.add(app_id)
        return {
            "application-id": app_id,
            "maximum-resource-capability": {"memory": self.max_memory, "vCores": self.max_vcores},
        }

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
        if memory > self.max_memory or vcores > self.max_vcores or memory <= 0 or vcores <= 0:
            return (
                "Invalid resource request, requested resource type=[memory-mb] < 0 or greater "
                f"than maximum allowed allocation. Requested resource=<memory:{memory}, "
                f"vCores:{vcores}>, maximum allowed allocation=<memory:{self.max_memory}, "
                f"vCores:{self.max_vcores}>"
            )
        self.new_ids.discard(app_id)
        queue = ctx.get("queue") or "default"
        tags = (ctx.get("application-tags") or {}).get("tag") or []
        if isinstance(tags, str):
            tags = [tags]
        env = {
            e["key"]: str(e["value"]) for e in (spec.get("environment") or {}).get("entry") or []
        }
        now = int(time.time() * 1000)
        app = {
            "id": app_id,
            "user": user,
            "name": ctx.get("application-name") or "",
            "queue": queue,
            "state": "ACCEPTED",
            "finalStatus": "UNDEFINED",
            "progress": 0.0,
            "trackingUI": "UNASSIGNED",
            "diagnostics": "",
            "clusterId": self.cluster_ts,
            "applicationType": ctx.get("application-type") or "YARN",
            "applicationTags": ",".join(t.lower() for t in tags),
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
            "_memory": memory,
            "_vcores": vcores,
            "_command": command,
            "_env": env,
        }
        if queue not in self.queues:
            app.update(
                state="FAILED",
                finalStatus="FAILED",
                finishedTime=now,
                diagnostics=f"Application {app_id} submitted by user {user} to unknown queue: "
                f"{queue}",
            )
        self.apps[app_id] = app
        return None

    def used(self) -> tuple[int, int]:
        """What the AM containers that run hold of the node."""
        held = [self.apps[app_id] for app_id in self.procs]
        return sum(a["_memory"] for a in held), sum(a["_vcores"] for a in held)

    def tick(self) -> None:
        for app_id, app in list(self.apps.items()):
            if app_id in self.procs:
                code = self.procs[app_id].poll()
                if code is not None:
                    self.procs.pop(app_id)
                    self.finish(app, code)
            elif app["state"] == "ACCEPTED":
                self.try_launch(app_id, app)

    def try_launch(self, app_id: str, app: dict[str, Any]) -> None:
        memory, vcores = app["_memory"], app["_vcores"]
        request = f"<memory:{memory}, vCores:{vcores}>"
        if app["queue"] in self.stuck:
            app["diagnostics"] = (
                f"[{datetime.now().strftime('%a %b %d %H:%M:%S %z %Y')}] Application is added "
                "to the scheduler and is not yet activated. Queue's AM resource limit exceeded. "
                f"Details : AM Partition = <DEFAULT_PARTITION>; AM Resource Request = {request}; "
                "Queue Resource Limit for AM = <memory:0, vCores:0>; User AM Resource Limit of "
                "the queue = <memory:0, vCores:0>; Queue AM Resource Usage = <memory:0, vCores:0>; "
            )
            return
        used_mem, used_vcores = self.used()
        if used_mem + memory > self.node_memory or used_vcores + vcores > self.node_vcores:
            app["diagnostics"] = (
                "[{}] Application is Activated, waiting for resources to be assigned for AM. "
                "Details : AM Partition = <DEFAULT_PARTITION> ; Partition Resource = "
                f"<memory:{self.node_memory}, vCores:{self.node_vcores}> ; AM Resource Request = "
                f"{request} ; "
            ).format(datetime.now().strftime("%a %b %d %H:%M:%S %z %Y"))
            return
        logdir = os.path.join(self.root, app_id)
        os.makedirs(logdir, exist_ok=True)
        command = app["_command"].replace("<LOG_DIR>", logdir)
        env = {**os.environ, **app["_env"], "CONTAINER_ID": f"container_{app_id[12:]}_01_000001"}
        try:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                env=env,
                cwd=logdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            app.update(state="FAILED", finalStatus="FAILED", diagnostics=str(exc))
            return
        self.procs[app_id] = proc
        now = datetime.now().strftime("%a %b %d %H:%M:%S %z %Y")
        app.update(
            launchTime=int(time.time() * 1000),
            amHostHttpAddress=NODE_HTTP,
            amContainerLogs=f"http://{NODE_HTTP}/node/containerlogs/{app_id}",
            allocatedMB=memory,
            allocatedVCores=vcores,
            runningContainers=1,
            diagnostics=f"[{now}] AM container is launched, waiting for AM container to "
            "Register with RM",
        )
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
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5  # the NodeManager's SIGTERM → SIGKILL delay
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.release(app, "KILLED", "KILLED", f"Application killed by user {app['user']}.")

    def shutdown(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def public(app: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in app.items() if not k.startswith("_")}


def make_app(rm: ResourceManager) -> Starlette:
    async def new_application(request: Request) -> Response:
        return JSONResponse(rm.new_application())

    async def submit(request: Request) -> Response:
        try:
            ctx = await request.json()
        except ValueError:
            return bad_request("The submitted application context is not valid JSON")
        if not isinstance(ctx, dict):
            return bad_request("The submitted application context is not an object")
        user = request.query_params.get("user.name") or "dr.who"
        error = rm.submit(ctx, user)
        if error:
            return bad_request(error)
        location = f"{request.base_url}ws/v1/cluster/apps/{ctx['application-id']}"
        return Response(status_code=202, headers={"Location": location})

    async def list_apps(request: Request) -> Response:
        q = request.query_params
        states = {s.strip().upper() for s in q.get("states", "").split(",") if s.strip()}
        tags = {t.strip().lower() for t in q.get("applicationTags", "").split(",") if t.strip()}
        apps = [
            public(a)
            for a in rm.apps.values()
            if (not states or a["state"] in states)
            and (not tags or tags & set(a["applicationTags"].split(",")))
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

    apps = "/ws/v1/cluster/apps"
    routes = [
        Route(apps + "/new-application", new_application, methods=["POST"]),
        Route(apps, submit, methods=["POST"]),
        Route(apps, list_apps, methods=["GET"]),
        Route(apps + "/{app_id}", get_app, methods=["GET"]),
        Route(apps + "/{app_id}/state", get_state, methods=["GET"]),
        Route(apps + "/{app_id}/state", put_state, methods=["PUT"]),
    ]

    return Starlette(routes=routes, lifespan=ticking_lifespan(rm.tick, rm.shutdown))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queues", default="default")
    parser.add_argument("--stuck-queue", action="append")
    parser.add_argument("--max-memory", type=int, default=8192)
    parser.add_argument("--max-vcores", type=int, default=8)
    parser.add_argument("--node-memory", type=int, default=16384)
    parser.add_argument("--node-vcores", type=int, default=16)
    parser.add_argument("--am-registers", action="store_true")
    args = parser.parse_args()
    uvicorn.run(
        make_app(ResourceManager(args)), host=args.host, port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
