"""Errors as the Kernel Gateway API shapes them: JSON ``{"reason", "message"}``."""

from __future__ import annotations

from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from raygate.logs import websocket_denied_var


class APIError(Exception):
    """An error with the HTTP status and message the client should see."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return JSONResponse({"reason": reason, "message": message}, status_code=status)


async def deny_websocket(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse a WebSocket before its handshake with the JSON error, as an HTTP response
    (the WebSocket Denial Response). Marked for the log filter: uvicorn's websockets-sansio
    logs "ASGI callable returned without completing handshake" at ERROR after every such
    refusal (Kludex/uvicorn#3138), which hostile clients could otherwise fill the log with."""
    websocket_denied_var.set(True)
    await websocket.send_denial_response(error_response(status, message))


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.message)


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and message == "Not Found":
        message = f"No such resource: {request.url.path}"
    response = error_response(exc.status_code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, f"Internal error: {type(exc).__name__}: {exc}")
