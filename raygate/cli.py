"""``raygate``: the command line.

Every ``serve`` option can also be set by a ``RAYGATE_*`` environment variable or in a
TOML config file (``--config``), keyed by the option's name with underscores.
Precedence: command line, then environment, then config file, then the default.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from dataclasses import fields
from typing import Any

import click

from raygate import __version__

from .bench.command import bench
from .config import GatewayConfig
from .kernelspec_cli import kernelspec
from .limits import log_capacity, raise_open_files_limit
from .logs import configure_logging
from .resources import parse_memory
from .users import name_list

ENV_PREFIX = "RAYGATE"


def _load_config_file(ctx: click.Context, param: click.Parameter, path: str | None) -> None:
    if not path:
        return
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}") from exc
    section = data.get("raygate", data)
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(section) - known)
    if unknown:
        raise click.BadParameter(f"{path}: unknown setting(s): {', '.join(unknown)}")
    ctx.default_map = {**(ctx.default_map or {}), **section}


def _option(*names: str, **kwargs: Any):
    kwargs.setdefault("show_default", True)
    kwargs.setdefault("show_envvar", True)
    return click.option(*names, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="raygate")
def main() -> None:
    """raygate: a Jupyter kernel gateway for clusters."""


main.add_command(kernelspec)
main.add_command(bench)


@main.command(context_settings={"auto_envvar_prefix": ENV_PREFIX})
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config_file,
    is_eager=True,
    expose_value=False,
    envvar="RAYGATE_CONFIG",
    show_envvar=True,
    help="TOML file with settings (keys as the options below, with underscores).",
)
@_option("--ip", default="127.0.0.1", help="Address to listen on.")
@_option("--port", default=8888, type=click.IntRange(0, 65535), help="Port to listen on.")
@_option(
    "--auth-token",
    default="",
    show_default=False,
    help="Token clients must send (Authorization: token T, or ?token=T). Empty: no auth.",
)
@_option(
    "--allow-origin",
    default="",
    help="CORS: origins allowed to call the API, comma-separated, or '*'.",
)
@_option("--base-url", default="/", help="URL prefix the API is served under.")
@_option(
    "--max-kernels",
    default=0,
    type=click.IntRange(min=0),
    help="Most kernels at once, starts in flight included (0: no limit).",
)
@_option("--default-kernel-name", default="python3", help="Kernelspec for starts that name none.")
@_option(
    "--prewarm",
    default="",
    help="Warm kernels kept ready per kernelspec, e.g. python3=2,py-gpu=1: starts that fit "
    "one (same kernelspec, no resource overrides) get it at once; they count against "
    "--max-kernels.",
)
@_option(
    "--kernel-launch-timeout",
    default=60.0,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a kernel may take to start, unless the request's KERNEL_LAUNCH_TIMEOUT says.",
)
@_option(
    "--max-kernel-launch-timeout",
    default=600.0,
    type=click.FloatRange(min=0, min_open=True),
    help="Upper bound on a request's KERNEL_LAUNCH_TIMEOUT.",
)
@_option(
    "--default-launcher",
    default="ray",
    help="Where kernels run unless their kernelspec names a launcher "
    "(ray, local, ssh, dask, kubernetes, yarn).",
)
@_option(
    "--cull-idle-timeout",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Shut down idle kernels after this many seconds without a message (0: never).",
)
@_option(
    "--cull-busy-timeout",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Shut down busy kernels after this many seconds without a message (0: never).",
)
@_option(
    "--cull-warning",
    default=60.0,
    type=click.FloatRange(min=0),
    help="Seconds before a cull that connected clients get a warning on stderr (capped to the "
    "timeout; 0: none). Any activity after it cancels the cull.",
)
@_option(
    "--restart-limit",
    default=5,
    type=click.IntRange(min=0),
    help="Automatic restarts of a kernel that died before it is declared dead (0: none).",
)
@_option(
    "--cull-interval",
    default=300.0,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between checks for kernels to cull (at least twice per --cull-warning).",
)
@_option(
    "--cull-connected/--no-cull-connected",
    default=False,
    help="Also cull kernels that have clients connected.",
)
@_option(
    "--cull-busy/--no-cull-busy",
    default=False,
    help="Compatibility: busy kernels use --cull-idle-timeout when --cull-busy-timeout is 0.",
)
@_option(
    "--allowed-envs",
    default="",
    help="Comma-separated variables besides KERNEL_* that a start request may pass to its kernel.",
)
@_option(
    "--kernelspec-dirs",
    default="",
    help="Extra directories to look for kernelspecs in, os.pathsep-separated, searched first.",
)
@_option(
    "--ws-buffer-bytes",
    default=64 * 1024 * 1024,
    type=click.IntRange(min=1024),
    help="Output queued per WebSocket client before the kernel's output waits for it.",
)
@_option(
    "--replay-buffer-bytes",
    default=32 * 1024 * 1024,
    type=click.IntRange(min=0),
    help="Output kept for a session whose WebSocket dropped, replayed when it reconnects "
    "(0: keep none).",
)
@_option(
    "--certfile",
    default="",
    show_default=False,
    type=click.Path(dir_okay=False),
    help="TLS certificate (PEM; may hold the chain): serve HTTPS and WSS.",
)
@_option(
    "--keyfile",
    default="",
    show_default=False,
    type=click.Path(dir_okay=False),
    help="TLS private key (PEM), when not in --certfile.",
)
@_option(
    "--client-ca",
    default="",
    show_default=False,
    type=click.Path(dir_okay=False),
    help="CA bundle (PEM): clients must present a certificate it signed (mutual TLS).",
)
@_option(
    "--ws-compression/--no-ws-compression",
    default=False,
    help="Offer permessage-deflate to WebSocket clients (costs CPU; off like Kernel Gateway).",
)
@_option(
    "--ws-ping-interval",
    default=30.0,
    type=click.FloatRange(min=0),
    help="Seconds between server pings on idle WebSockets (0: none).",
)
@_option(
    "--state-dir",
    default="",
    help="Where remote launchers (ssh, dask) keep their kernels' reattach records "
    "(0600 files), and the gateway what each session was last sent (to replay what it "
    "missed after a crash). Default: $XDG_STATE_HOME/raygate or ~/.local/state/raygate.",
)
@_option(
    "--report-ip",
    default="0.0.0.0",
    help="Interface the listener for remote kernels' connection reports binds.",
)
@_option(
    "--report-port",
    default=0,
    type=click.IntRange(0, 65535),
    help="Port of the report listener (0: any free port).",
)
@_option(
    "--report-address",
    default="",
    help="Address remote bootstraps reach the report listener at (default: the "
    "gateway's address as seen from each SSH host or the Dask scheduler).",
)
@_option(
    "--ssh-hosts",
    default="",
    help="Comma-separated [user@]host[:port] list the ssh launcher places kernels on.",
)
@_option("--ssh-port", default=22, type=click.IntRange(1, 65535), help="Default SSH port.")
@_option(
    "--ssh-user",
    default="",
    help="Remote account that runs kernels (default: the gateway's own user).",
)
@_option(
    "--ssh-user-from-request/--no-ssh-user-from-request",
    default=False,
    help="Run each kernel as the account its request names in KERNEL_USERNAME.",
)
@_option("--ssh-key-file", default="", help="Private key for SSH logins (default: ssh's own).")
@_option(
    "--ssh-known-hosts",
    default="",
    help="known_hosts file SSH host keys are checked against (default: ~/.ssh/known_hosts).",
)
@_option(
    "--ssh-accept-new-host-keys/--no-ssh-accept-new-host-keys",
    default=False,
    help="Trust and record the key of a host known_hosts has no entry for (a changed key "
    "is always refused).",
)
@_option(
    "--ssh-host-selection",
    default="round-robin",
    type=click.Choice(["round-robin", "least-kernels"]),
    help="How the ssh launcher picks a host when KERNEL_REMOTE_HOST does not pin one.",
)
@_option(
    "--ssh-python",
    default="",
    help="Python on the SSH hosts that has raygate installed (default: the gateway's).",
)
@_option(
    "--dask-scheduler",
    default="",
    help="Address of the Dask scheduler the dask launcher places kernels through.",
)
@_option(
    "--k8s-namespace",
    default="",
    help="Namespace the kubernetes launcher starts kernel pods in (default: the kubeconfig "
    "context's, or the gateway pod's own).",
)
@_option(
    "--k8s-pod-template",
    default="",
    help="YAML Pod every kernel pod is made from (default: k8s/kernel-pod.yaml of raygate's "
    "source tree). Checked when the gateway starts.",
)
@_option(
    "--k8s-kernel-image",
    default="",
    help="Image of kernel pods unless KERNEL_IMAGE or the kernelspec names one (default: "
    "the pod template's).",
)
@_option(
    "--k8s-kernel-namespaces",
    default="",
    help="Comma-separated namespaces a start request's KERNEL_NAMESPACE may name besides "
    "--k8s-namespace ('*': any).",
)
@_option(
    "--k8s-kubeconfig",
    default="",
    help="kubeconfig file of the cluster (default: the pod's service account in a cluster, "
    "else $KUBECONFIG or ~/.kube/config).",
)
@_option("--k8s-context", default="", help="kubeconfig context to use (default: its current).")
@_option(
    "--k8s-unschedulable-wait",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Seconds a kernel pod may stay Unschedulable (e.g. while a cluster autoscaler adds a "
    "node) before its start fails with the scheduler's reason (0: fail at once).",
)
@_option(
    "--k8s-scan-interval",
    default=30.0,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between scans for kernel pods started by other gateways and for orphaned "
    "pods to delete (also done at startup).",
)
@_option(
    "--k8s-allowed-service-accounts",
    default="",
    help="Comma-separated service accounts (patterns: * ? [..] {username}) a start request's "
    "KERNEL_SERVICE_ACCOUNT_NAME may name (default: only the pod template's, else 'default').",
)
@_option(
    "--k8s-allowed-images",
    default="",
    help="Comma-separated image patterns (* ? [..] {username}) KERNEL_IMAGE may name (default: "
    "only the images configured: the pod template's, the kernelspec's, --k8s-kernel-image).",
)
@_option(
    "--k8s-allowed-volume-types",
    default="emptyDir",
    help="Comma-separated volume types KERNEL_VOLUMES may add (e.g. emptyDir,configMap; "
    "persistentVolumeClaim is allowed by claim name, see --k8s-allowed-claims).",
)
@_option(
    "--k8s-allowed-claims",
    default="",
    help="Comma-separated PersistentVolumeClaim names (patterns, e.g. claim-{username}: the "
    "kernel's user's own) KERNEL_VOLUMES may mount (default: none).",
)
@_option(
    "--k8s-allowed-uids",
    default="",
    help="Comma-separated uids and ranges (e.g. 1000-1999,65534) KERNEL_UID may choose (default: "
    "only the pod template's runAsUser; never 0).",
)
@_option(
    "--k8s-allowed-gids",
    default="",
    help="Comma-separated gids and ranges KERNEL_GID may choose (default: only the pod "
    "template's runAsGroup; never 0).",
)
@_option(
    "--yarn-endpoint",
    default="",
    help="URL of the YARN ResourceManager's REST API (http://rm:8088) the yarn launcher "
    "submits kernels to.",
)
@_option("--yarn-queue", default="default", help="YARN queue unless KERNEL_QUEUE names one.")
@_option(
    "--yarn-user",
    default="",
    help="User the ResourceManager's simple auth is given (user.name; default: the "
    "gateway's own user).",
)
@_option(
    "--yarn-python",
    default="",
    help="Python on the YARN nodes that has raygate installed (default: the gateway's).",
)
@_option(
    "--ray-address",
    default="",
    envvar=["RAYGATE_RAY_ADDRESS", "RAY_ADDRESS"],
    help="Ray cluster to join (host:port of its GCS). Empty: start a local Ray for this "
    "gateway, whose kernels stop with it. Kernels on a joined cluster outlive the gateway.",
)
@_option("--ray-namespace", default="raygate", help="Ray namespace of the kernel actors.")
@_option(
    "--ray-num-cpus",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Logical CPUs of the local Ray started without --ray-address (0: the machine's "
    "count, at least 16: idle kernels use little).",
)
@_option(
    "--ray-num-gpus",
    default=None,
    type=click.FloatRange(min=0),
    show_default=False,
    help="GPUs of the local Ray started without --ray-address (default: as Ray detects).",
)
@_option(
    "--ray-kernel-cpus",
    default=1.0,
    type=click.FloatRange(min=0),
    help="CPUs a Ray kernel reserves when neither its kernelspec nor KERNEL_CPUS says.",
)
@_option(
    "--ray-auth-token-file",
    default="",
    help="File with the Ray cluster's auth token, for clusters with token authentication "
    "(or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH).",
)
@_option(
    "--max-kernel-cpus",
    default=0.0,
    type=click.FloatRange(min=0),
    help="The most CPUs one kernel may ask for (KERNEL_CPUS and its limit; 0: no cap).",
)
@_option(
    "--max-kernel-memory",
    default="0",
    help="The most memory one kernel may ask for, e.g. 16Gi (0: no cap).",
)
@_option(
    "--max-kernel-gpus",
    default=0.0,
    type=click.FloatRange(min=0),
    help="The most GPUs one kernel may ask for (0: no cap).",
)
@_option(
    "--kernel-memory-limit-default",
    default="0",
    help="Memory limit of kernels whose KERNEL_MEMORY_LIMIT and kernelspec set none, e.g. "
    "8Gi (0: none). A kernel over its limit is stopped and restarted, with a message that "
    "names it; enforced by a cgroup per kernel where one can be made, else by polling.",
)
@_option(
    "--kernel-cpus-limit-default",
    default=0.0,
    type=click.FloatRange(min=0),
    help="CPU limit of kernels whose KERNEL_CPUS_LIMIT and kernelspec set none (0: none); "
    "a CFS quota of the kernel's cgroup.",
)
@_option(
    "--users-file",
    default="",
    show_default=False,
    type=click.Path(dir_okay=False),
    help="TOML or JSON file mapping token -> username: each user's own token authenticates "
    "and names them (reread when it changes, or on SIGHUP).",
)
@_option(
    "--user-header",
    default="",
    show_default=False,
    help="Header naming the user, e.g. X-Forwarded-User, set by an authenticating proxy. "
    "Only behind a proxy that strips it from clients' requests (empty: not trusted).",
)
@_option("--allow-users", default="", help="Comma-separated users who may start kernels.")
@_option("--deny-users", default="", help="Comma-separated users who may not start kernels.")
@_option(
    "--admin-users",
    default="",
    help="Comma-separated authenticated users who see and control every user's kernels.",
)
@_option(
    "--max-kernels-per-user",
    default=0,
    type=click.IntRange(min=0),
    help="Most kernels one user holds, starts in flight included (0: no limit).",
)
@_option(
    "--max-gpus-per-user",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Most GPUs one user's kernels ask for together (0: no cap).",
)
@_option(
    "--max-memory-per-user",
    default="0",
    help="Most memory one user's kernels ask for together, e.g. 64Gi (0: no cap).",
)
@_option(
    "--discovery-interval",
    default=2.0,
    type=click.FloatRange(min=0),
    help="Seconds between looks for kernels started by other gateway replicas on the "
    "same cluster (0: never).",
)
@_option(
    "--kernel-encryption",
    default="none",
    type=click.Choice(["none", "curve"], case_sensitive=False),
    help="curve: encrypt kernel traffic between the gateway and kernels with CurveZMQ "
    "(keys made on each kernel's host; the kernel must support it, as ipykernel 7.4+ does).",
)
@_option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log verbosity.",
)
@_option(
    "--log-format",
    default="text",
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="Log lines as text or as JSON objects (time, level, logger, message, kernel_id).",
)
@_option(
    "--metrics-public/--no-metrics-public",
    default=False,
    help="Serve /metrics (Prometheus) without the auth token.",
)
def serve(**options: Any) -> None:
    """Serve the Kernel Gateway API and run kernels."""
    import uvicorn
    import zmq

    from .app import create_app
    from .kernels.pool import parse_prewarm

    options["allowed_envs"] = [v for v in options["allowed_envs"].split(",") if v.strip()]
    options["kernelspec_dirs"] = [d for d in options["kernelspec_dirs"].split(":") if d.strip()]
    options["ssh_hosts"] = [h.strip() for h in options["ssh_hosts"].split(",") if h.strip()]
    for key in ("max_kernel_memory", "max_memory_per_user", "kernel_memory_limit_default"):
        options[key] = _memory_option(options[key], "--" + key.replace("_", "-"))
    for key in ("allow_users", "deny_users", "admin_users"):
        options[key] = name_list(options[key])  # a TOML list, or comma-separated
    try:
        options["prewarm"] = parse_prewarm(options["prewarm"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prewarm") from None
    options["kernel_encryption"] = options["kernel_encryption"].lower()
    if options["kernel_encryption"] == "curve" and not zmq.has("curve"):
        raise click.BadParameter(
            "this pyzmq has no CurveZMQ support (libzmq built without libsodium)",
            param_hint="--kernel-encryption",
        )
    known = {f.name for f in fields(GatewayConfig)}
    config = GatewayConfig(**{k: v for k, v in options.items() if k in known})
    configure_logging(config.log_level, config.log_format.lower())
    log_capacity(*raise_open_files_limit())  # each kernel holds ~8 fds in the gateway
    tls = tls_options(config)
    try:
        app = create_app(config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    uvicorn.run(
        app,
        host=config.ip,
        port=config.port,
        log_level=config.log_level.lower(),
        log_config=None,  # uvicorn's records go through raygate's handler (configure_logging)
        ws_ping_interval=config.ws_ping_interval or None,
        ws_per_message_deflate=config.ws_compression,
        ws_max_size=config.ws_max_message_bytes,
        timeout_graceful_shutdown=10,
        lifespan="on",
        **tls,
    )


def _memory_option(value: Any, hint: str) -> int:
    """Bytes from a size like 16Gi; 0 (or empty) means no cap."""
    if str(value).strip() in ("", "0"):
        return 0
    try:
        return parse_memory(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def tls_options(config: GatewayConfig) -> dict[str, Any]:
    """uvicorn's TLS settings; a client CA makes client certificates required."""
    if not config.certfile:
        if config.keyfile or config.client_ca:
            raise click.UsageError("--keyfile and --client-ca need --certfile")
        return {}
    for path in (config.certfile, config.keyfile, config.client_ca):
        if path and not os.path.isfile(path):
            raise click.UsageError(f"TLS file not found: {path}")
    options: dict[str, Any] = {"ssl_certfile": config.certfile}
    if config.keyfile:
        options["ssl_keyfile"] = config.keyfile
    if config.client_ca:
        options["ssl_ca_certs"] = config.client_ca
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
