"""The settings of the API modes and of notebook-http, declared once (raygate.settings).

``api``, ``seed_uri`` and ``prespawn_count`` are named as Jupyter Kernel Gateway names them
(``--KernelGatewayApp.api`` etc.); its module names for the modes are accepted too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raygate.settings import Choice, Integer, Number, Parsed, Size, Text, setting

KERNEL = "kernel"
NOTEBOOK_HTTP = "notebook-http"
_ALIASES = {
    KERNEL: KERNEL,
    "kernel_gateway.jupyter_websocket": KERNEL,
    "jupyter-websocket": KERNEL,
    NOTEBOOK_HTTP: NOTEBOOK_HTTP,
    "kernel_gateway.notebook_http": NOTEBOOK_HTTP,
}


def parse_api(text: Any) -> tuple[str, ...]:
    """``kernel``, ``notebook-http`` or both (comma-separated), in a fixed order."""
    items = text if isinstance(text, list | tuple) else str(text or KERNEL).split(",")
    modes = set()
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in _ALIASES:
            raise ValueError(
                f"{item!r} is not one of: kernel, notebook-http (or both: 'kernel,notebook-http')"
            )
        modes.add(_ALIASES[name])
    return tuple(m for m in (KERNEL, NOTEBOOK_HTTP) if m in modes) or (KERNEL,)


@dataclass
class NotebookHttpConfig:
    api: tuple[str, ...] = setting(
        (KERNEL,),
        "What to serve: kernel (the Kernel Gateway kernel API), notebook-http (the seed "
        "notebook's annotated cells as HTTP endpoints), or kernel,notebook-http (both; the "
        "endpoints under --notebook-http-prefix).",
        Parsed(parse_api, show=KERNEL, metavar="API"),
    )
    seed_uri: str = setting(
        "",
        "notebook-http: the notebook (.ipynb path or http(s) URL) whose annotated cells "
        "('# GET /path') are the endpoints.",
        Text(),
        show_default=False,
    )
    prespawn_count: int = setting(
        1,
        "notebook-http: kernels that serve the endpoints, one request at a time each "
        "(started like any kernel, so on Ray placed by the kernelspec's resources).",
        Integer(min=1),
    )
    force_kernel_name: str = setting(
        "",
        "notebook-http: kernelspec of the endpoint kernels (default: the notebook's own, "
        "else --default-kernel-name).",
        show_default=False,
    )
    notebook_http_max_kernels: int = setting(
        0,
        "notebook-http: start more kernels while requests wait, up to this many (0: only "
        "--prespawn-count); those beyond --prespawn-count stop after "
        "--notebook-http-idle-stop seconds idle.",
        Integer(min=0),
    )
    notebook_http_idle_stop: float = setting(
        60.0,
        "notebook-http: seconds an extra kernel (beyond --prespawn-count) stays idle before "
        "it is stopped.",
        Number(min=0),
    )
    cell_parser: str = setting(
        "cell",
        "notebook-http: how endpoints are annotated: cell ('# GET /path') or swagger (a "
        "markdown cell holds the swagger document, code cells say '# operationId: ID').",
        Choice(("cell", "swagger")),
    )
    allow_notebook_download: bool = setting(
        False, "notebook-http: serve the seed notebook itself at /_api/source."
    )
    notebook_http_prefix: str = setting(
        "/notebook",
        "Where the endpoints are when both APIs are served (--api kernel,notebook-http).",
    )
    notebook_http_queue: int = setting(
        100,
        "notebook-http: requests that may wait for a busy kernel; beyond them: 503.",
        Integer(min=0),
    )
    notebook_http_timeout: float = setting(
        60.0,
        "notebook-http: seconds a request may wait for a kernel and run; past them the "
        "kernel is interrupted and the request answered 504 (0: no limit).",
        Number(min=0),
    )
    notebook_http_max_body: int = setting(
        10 * 1024 * 1024,
        "notebook-http: the largest request body, e.g. 10Mi (413 beyond).",
        Size(),
    )
    notebook_http_body_timeout: float = setting(
        30.0,
        "notebook-http: seconds a client may take to send its request body (408 beyond).",
        Number(min=0, min_open=True),
    )

    @property
    def notebook_http(self) -> bool:
        return NOTEBOOK_HTTP in self.api

    @property
    def kernel_api(self) -> bool:
        return KERNEL in self.api
