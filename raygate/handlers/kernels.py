"""``/api/kernels``: start, list, inspect, interrupt, restart and stop kernels."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from raygate.users import authenticated_groups, authenticated_user

from .common import find_kernel, json_body, registry, sees, url

log = logging.getLogger("raygate.handlers")
T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before its start was answered."""


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; cancelled (and ClientGone raised) when the client disconnects
    first, so that a start nobody waits for any more leaves nothing behind (a kernel
    still waiting for cluster capacity would otherwise start later, for nobody). The body
    must have been read: what ``receive`` delivers next is the disconnect."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # its clean-up runs to the end
        raise ClientGone
    return task.result()


async def list_kernels(request: Request) -> JSONResponse:
    kernels = [kernel for kernel in registry(request).list() if sees(request, kernel)]
    return JSONResponse([kernel.model() for kernel in kernels])


async def start_kernel(request: Request) -> Response:
    body = await json_body(request)
    user = authenticated_user(request)
    start = registry(request).start(
        body.get("name"), body.get("env"), user=user, groups=authenticated_groups(request)
    )
    try:
        kernel = await unless_client_leaves(request, start)
    except ClientGone:
        log.info("kernel start abandoned: the client disconnected before it was ready")
        return Response(status_code=499)  # nobody reads it
    return JSONResponse(
        kernel.model(),
        status_code=201,
        headers={"Location": url(request, f"api/kernels/{kernel.id}")},
    )


async def get_kernel(request: Request) -> JSONResponse:
    return JSONResponse((await find_kernel(request)).model())


async def delete_kernel(request: Request) -> Response:
    kernel = await find_kernel(request)
    await registry(request).shutdown(kernel.id)
    return Response(status_code=204)


async def interrupt_kernel(request: Request) -> Response:
    kernel = await find_kernel(request)
    await registry(request).interrupt(kernel.id)
    return Response(status_code=204)


async def restart_kernel(request: Request) -> JSONResponse:
    kernel = await find_kernel(request)
    kernel = await registry(request).restart(kernel.id)
    return JSONResponse(kernel.model())
