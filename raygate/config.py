"""The gateway's own settings, declared once (:mod:`raygate.settings`).

``raygate serve`` makes each field declared with :func:`~raygate.settings.setting` an
option, a ``RAYGATE_*`` variable and a config file key; launchers declare their own
settings on their classes (``Launcher.settings``), so nothing here knows a launcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .groups import parse_group_caps
from .kernels.prewarm import parse_prewarm
from .settings import Choice, Integer, Items, Number, Parsed, Size, Text, setting


def _prewarm(text: Any) -> dict[str, int]:
    return text if isinstance(text, dict) else parse_prewarm(str(text))


def _encryption(text: Any) -> str:
    value = str(text or "").strip().lower()
    if value not in ("", "none", "curve"):
        raise ValueError(f"{text!r} is not one of 'none', 'curve'")
    return value


_USERS = Items(",")
"""Usernames: a TOML list, or comma-separated."""


@dataclass
class GatewayConfig:
    ip: str = setting("127.0.0.1", "Address to listen on.")
    port: int = setting(8888, "Port to listen on.", Integer(0, 65535))
    auth_token: str = setting(
        "",
        "Token clients must send (Authorization: token T, or ?token=T). Empty: no auth.",
        show_default=False,
    )
    allow_origin: str = setting(
        "", "CORS: origins allowed to call the API, comma-separated, or '*'."
    )
    base_url: str = setting("/", "URL prefix the API is served under.")
    max_kernels: int = setting(
        0, "Most kernels at once, starts in flight included (0: no limit).", Integer(min=0)
    )
    default_kernel_name: str = setting("python3", "Kernelspec for starts that name none.")
    prewarm: dict[str, int] = setting(
        {},
        "Warm kernels kept ready per kernelspec, e.g. python3=2,py-gpu=1: starts that fit "
        "one (same kernelspec, no resource overrides) get it at once; they count against "
        "--max-kernels.",
        Parsed(_prewarm, show=""),
    )
    """Warm kernels to keep ready per kernelspec (``{"python3": 2}``), handed out on start
    to requests that fit them (raygate/kernels/pool.py); they count against max_kernels."""
    prewarm_max: int = setting(
        0,
        "Most warm kernels per kernelspec of --prewarm when starts come fast: the pool grows "
        "to the starts of the last two minutes, up to this, and shrinks back when they stop "
        "(0: the --prewarm size, fixed).",
        Integer(min=0),
    )
    kernel_launch_timeout: float = setting(
        60.0,
        "Seconds a kernel may take to start, unless the request's KERNEL_LAUNCH_TIMEOUT says.",
        Number(min=0, min_open=True),
    )
    max_kernel_launch_timeout: float = setting(
        600.0,
        "Upper bound on a request's KERNEL_LAUNCH_TIMEOUT.",
        Number(min=0, min_open=True),
    )
    default_launcher: str = setting(
        "ray",
        "Where kernels run unless their kernelspec names a launcher: a launcher kind "
        "(built in: ray, local, ssh, dask, kubernetes, yarn; more from packages that "
        "register raygate.launchers entry points).",
    )
    cull_idle_timeout: float = setting(
        0.0,
        "Shut down idle kernels after this many seconds without a message (0: never).",
        Number(min=0),
    )
    cull_busy_timeout: float = setting(
        0.0,
        "Shut down busy kernels after this many seconds without a message (0: never).",
        Number(min=0),
    )
    cull_warning: float = setting(
        60.0,
        "Seconds before a cull that connected clients get a warning on stderr (capped to the "
        "timeout; 0: none). Any activity after it cancels the cull.",
        Number(min=0),
    )
    restart_limit: int = setting(
        5,
        "Automatic restarts in a row of a kernel that keeps dying (within 10 s of its restart) "
        "before it is declared dead (0: none).",
        Integer(min=0),
    )
    cull_interval: float = setting(
        300.0,
        "Seconds between checks for kernels to cull (at least twice per --cull-warning).",
        Number(min=0, min_open=True),
    )
    cull_connected: bool = setting(False, "Also cull kernels that have clients connected.")
    cull_busy: bool = setting(
        False,
        "Compatibility: busy kernels use --cull-idle-timeout when --cull-busy-timeout is 0.",
    )
    allowed_envs: list[str] = setting(
        [],
        "Comma-separated variables besides KERNEL_* that a start request may pass to its kernel.",
        Items(",", strip=False),
    )
    kernelspec_dirs: list[str] = setting(
        [],
        "Extra directories to look for kernelspecs in, os.pathsep-separated, searched first.",
        Items(":", strip=False),
    )
    ws_buffer_bytes: int = setting(
        64 * 1024 * 1024,
        "Output queued per WebSocket client before the kernel's output waits for it.",
        Integer(min=1024),
    )
    replay_buffer_bytes: int = setting(
        32 * 1024 * 1024,
        "Output kept for a session whose WebSocket dropped, replayed when it reconnects "
        "(0: keep none).",
        Integer(min=0),
    )
    """Output kept per disconnected session, replayed when it reconnects (0: none)."""
    certfile: str = setting(
        "",
        "TLS certificate (PEM; may hold the chain): serve HTTPS and WSS.",
        Text(path=True),
        show_default=False,
    )
    keyfile: str = setting(
        "", "TLS private key (PEM), when not in --certfile.", Text(path=True), show_default=False
    )
    client_ca: str = setting(
        "",
        "CA bundle (PEM): clients must present a certificate it signed (mutual TLS).",
        Text(path=True),
        show_default=False,
    )
    ws_compression: bool = setting(
        False,
        "Offer permessage-deflate to WebSocket clients (costs CPU; off like Kernel Gateway).",
    )
    ws_ping_interval: float = setting(
        30.0, "Seconds between server pings on idle WebSockets (0: none).", Number(min=0)
    )
    state_dir: str = setting(
        "",
        "Where remote launchers (ssh, dask) keep their kernels' reattach records "
        "(0600 files), and the gateway what each session was last sent (to replay what it "
        "missed after a crash). Default: $XDG_STATE_HOME/raygate or ~/.local/state/raygate.",
    )
    max_kernel_cpus: float = setting(
        0.0,
        "The most CPUs one kernel may ask for (KERNEL_CPUS and its limit; 0: no cap).",
        Number(min=0),
    )
    max_kernel_memory: int = setting(
        0, "The most memory one kernel may ask for, e.g. 16Gi (0: no cap).", Size()
    )
    max_kernel_gpus: float = setting(
        0.0, "The most GPUs one kernel may ask for (0: no cap).", Number(min=0)
    )
    kernel_memory_limit_default: int = setting(
        0,
        "Memory limit of kernels whose KERNEL_MEMORY_LIMIT and kernelspec set none, e.g. "
        "8Gi (0: none). A kernel over its limit is stopped and restarted, with a message that "
        "names it; enforced by a cgroup per kernel where one can be made, else by polling.",
        Size(),
    )
    """Memory limit (bytes) of kernels whose request and kernelspec set none (0: none);
    enforced by each kernel's supervisor (launchers/kernelside/limits.py), as are theirs."""
    kernel_cpus_limit_default: float = setting(
        0.0,
        "CPU limit of kernels whose KERNEL_CPUS_LIMIT and kernelspec set none (0: none); "
        "a CFS quota of the kernel's cgroup.",
        Number(min=0),
    )
    # Users: identity, who may start kernels, and per-user caps (raygate/users.py).
    users_file: str = setting(
        "",
        "TOML or JSON file mapping token -> username: each user's own token authenticates "
        "and names them (reread when it changes, or on SIGHUP).",
        Text(path=True),
        show_default=False,
    )
    user_header: str = setting(
        "",
        "Header naming the user, e.g. X-Forwarded-User, set by an authenticating proxy. "
        "Only behind a proxy that strips it from clients' requests (empty: not trusted).",
        show_default=False,
    )
    allow_users: list[str] = setting(
        [], "Comma-separated users who may start kernels (group:NAME: a group's members).", _USERS
    )
    """Users who may start kernels (empty: everyone not denied)."""
    deny_users: list[str] = setting(
        [], "Comma-separated users who may not start kernels (group:NAME too).", _USERS
    )
    admin_users: list[str] = setting(
        [],
        "Comma-separated authenticated users who see and control every user's kernels "
        "(group:NAME too).",
        _USERS,
    )
    max_kernels_per_user: int = setting(
        0,
        "Most kernels one user holds, starts in flight included (0: no limit).",
        Integer(min=0),
    )
    max_gpus_per_user: float = setting(
        0.0, "Most GPUs one user's kernels ask for together (0: no cap).", Number(min=0)
    )
    max_memory_per_user: int = setting(
        0, "Most memory one user's kernels ask for together, e.g. 64Gi (0: no cap).", Size()
    )
    group_caps: dict[str, dict[str, float]] = setting(
        {},
        "Per-user caps that differ per group: a config file table per group, "
        '[group_caps.physics] with max_gpus_per_user = 8 (or JSON: {"physics": '
        '{"max_gpus_per_user": 8}}). A member of several such groups gets the most generous '
        "of each cap; users in none get the --max-*-per-user caps (docs/jupyterhub.md).",
        Parsed(parse_group_caps, metavar="JSON"),
    )
    """Group -> the caps its members get in place of the ``max_*_per_user`` ones
    (:func:`raygate.users.caps_for`)."""
    jupyterhub_api_url: str = setting(
        "",
        "JupyterHub's API, e.g. http://hub:8081/hub/api: a client's token is checked there "
        "and names a Hub user and their groups (raygate is a Hub service; docs/jupyterhub.md).",
        show_default=False,
    )
    jupyterhub_api_token: str = setting(
        "",
        "This service's own Hub API token (as JupyterHub gives its services, in "
        "JUPYTERHUB_API_TOKEN).",
        show_default=False,
        envvars=("JUPYTERHUB_API_TOKEN",),
    )
    jupyterhub_cache_seconds: float = setting(
        30.0,
        "Seconds the Hub's answer for a token is kept: a revoked token stops working "
        "within this time (0: ask the Hub on every request).",
        Number(min=0),
    )
    discovery_interval: float = setting(
        2.0,
        "Seconds between looks for kernels started by other gateway replicas on the "
        "same cluster (0: never).",
        Number(min=0),
    )
    kernel_encryption: str = setting(
        "",
        "curve: encrypt kernel traffic between the gateway and kernels with CurveZMQ "
        "(keys made on each kernel's host; the kernel must support it, as ipykernel 7.4+ does). "
        "Default: none, or curve with --kernel-isolation users.",
        Parsed(_encryption, metavar="[none|curve]"),
    )
    """``curve``: kernels started by this gateway are CurveZMQ servers (keys made on the
    kernel's host) and the gateway talks to them as a Curve client; ``none``: plain ZMQ.
    Empty: ``curve`` with ``kernel_isolation = "users"``, else ``none``."""
    kernel_isolation: str = setting(
        "none",
        "users: each kernel runs as its user's own OS account (named like the user, or as "
        "the users file says), owns its files, speaks CurveZMQ and gets no cluster "
        "credentials its kernelspec does not grant; needs --users-file or --user-header "
        "(docs/security.md). none: kernels run as raygate's account, for one team that "
        "trusts each other.",
        Choice(("none", "users"), case_sensitive=False),
    )
    """(raygate/isolation.py)"""
    log_level: str = setting(
        "info",
        "Log verbosity.",
        Choice(("debug", "info", "warning", "error"), case_sensitive=False),
    )
    log_format: str = setting(
        "text",
        "Log lines as text or as JSON objects (time, level, logger, message, kernel_id).",
        Choice(("text", "json"), case_sensitive=False),
    )
    metrics_public: bool = setting(False, "Serve /metrics (Prometheus) without the auth token.")
    # Internal: no option, variable or file key.
    ws_max_message_bytes: int = 256 * 1024 * 1024
    monitor_interval: float = 1.0

    def __post_init__(self) -> None:
        if not self.kernel_encryption:
            self.kernel_encryption = "curve" if self.kernel_isolation == "users" else "none"
        base = "/" + self.base_url.strip("/")
        self.base_url = base if base == "/" else base + "/"
