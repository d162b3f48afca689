"""``/api/kernels``: start, list, inspect, interrupt, restart and stop kernels."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from raygate.users import authenticated_groups, authenticated_user

from .common import find_kernel, json_body, registry, sees, url


async def list_kernels(request: Request) -> JSONResponse:
    kernels = [kernel for kernel in registry(request).list() if sees(request, kernel)]
    return JSONResponse([kernel.model() for kernel in kernels])


async def start_kernel(request: Request) -> JSONResponse:
    body = await json_body(request)
    user = authenticated_user(request)
    kernel = await registry(request).start(
        body.get("name"), body.get("env"), user=user, groups=authenticated_groups(request)
    )
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
