"""``/api/kernelspecs`` and the kernelspec resource files under ``/kernelspecs``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse

from raygate.errors import APIError
from raygate.kernelspecs import KernelSpecs, NoSuchKernel

from .common import config


def _specs(request: Request) -> KernelSpecs:
    return request.app.state.kernelspecs


def _one(request: Request, name: str) -> JSONResponse:
    try:
        return JSONResponse(_specs(request).model(name, config(request).base_url))
    except NoSuchKernel:
        raise APIError(404, f"No such kernelspec: {name}") from None


async def list_kernelspecs(request: Request) -> JSONResponse:
    # jupyter_server's gateway client, with KERNEL_USERNAME set, asks for one spec as
    # ``/api/kernelspecs?user=bob/python3``; answer what it meant.
    user = request.query_params.get("user", "")
    if "/" in user:
        return _one(request, user.rsplit("/", 1)[1])
    return JSONResponse(_specs(request).all_models(config(request).base_url))


async def get_kernelspec(request: Request) -> JSONResponse:
    return _one(request, request.path_params["name"])


async def kernelspec_resource(request: Request) -> FileResponse:
    name = request.path_params["name"]
    filename = request.path_params["filename"]
    try:
        path = _specs(request).resource_path(name, filename)
    except NoSuchKernel:
        raise APIError(404, f"No such kernelspec: {name}") from None
    if path is None:
        raise APIError(404, f"Kernelspec {name} has no resource {filename}")
    return FileResponse(path)
