"""``raygate``: the command line.

``serve``'s options are made from the settings the gateway (:class:`GatewayConfig`) and each
installed launcher (``Launcher.settings``) declare: each is also a ``RAYGATE_*`` environment
variable and a key of a TOML config file (``--config``), keyed by its name with underscores.
Precedence: command line, then environment, then config file, then the default.
"""

from __future__ import annotations

import functools
import os
import ssl
import tomllib
from typing import Any

import click

from raygate import __version__

from .bench.command import bench
from .config import GatewayConfig
from .kernelspec_cli import kernelspec
from .limits import log_capacity, raise_open_files_limit
from .logs import configure_logging
from .notebook_http.settings import NotebookHttpConfig
from .settings import Flag, Setting, declared, merge

ENV_PREFIX = "RAYGATE"
SERVE_HELP = "Serve the Kernel Gateway API and run kernels."


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


class _Main(click.Group):
    """The ``raygate`` group; ``serve`` is made on first use, since making its options
    imports every installed launcher (``raygate kernelspec`` need not)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "serve"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "serve":
            return serve_command()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="raygate")
def main() -> None:
    """raygate: a Jupyter kernel gateway for clusters."""


main.add_command(kernelspec)
main.add_command(bench)


def serve_settings() -> list[tuple[str, Setting]]:
    """Every setting ``serve`` takes, with its owner: the gateway's, then each installed
    launcher's. Raises :class:`click.UsageError` for a launcher that cannot be imported or
    two owners declaring one name differently."""
    from raygate.launchers import LauncherError, launcher_kinds

    try:
        owners: dict[str, type] = {
            "the gateway": GatewayConfig,
            "notebook-http": NotebookHttpConfig,
        }
        for kind, cls in launcher_kinds().items():
            if cls.settings is not None:
                owners[f"launcher {kind!r}"] = cls.settings
        return list(merge(owners))
    except (LauncherError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


def setting_option(setting: Setting) -> click.Option:
    """The ``serve`` option of one setting: its variable, its default, its parse rule."""
    envvar: str | list[str] = setting.envvar
    if setting.envvars:
        envvar = [setting.envvar, *setting.envvars]
    if isinstance(setting.kind, Flag):
        decls = [setting.name, f"{setting.option}/--no-{setting.option[2:]}"]
        return click.Option(
            decls,
            default=setting.default,
            help=setting.help,
            envvar=envvar,
            show_envvar=True,
            show_default=setting.show_default,
        )
    default = None if setting.default is None else setting.kind.text(setting.default)
    return click.Option(
        [setting.name, setting.option],
        default=default,
        type=setting.kind.param_type(),
        help=setting.help,
        envvar=envvar,
        show_envvar=True,
        show_default=setting.show_default,
    )


@functools.cache
def serve_command() -> click.Command:
    """``raygate serve``, its options made from the declared settings (once per process)."""
    config_option = click.Option(
        ["--config"],
        type=click.Path(dir_okay=False),
        callback=_load_config_file,
        is_eager=True,
        expose_value=False,
        envvar="RAYGATE_CONFIG",
        show_envvar=True,
        help="TOML file with settings (keys as the options below, with underscores).",
    )
    params: list[click.Parameter] = [config_option]
    params += [setting_option(setting) for _, setting in serve_settings()]
    return click.Command(
        "serve",
        callback=run_serve,
        params=params,
        help=SERVE_HELP,
        context_settings={"auto_envvar_prefix": ENV_PREFIX},
    )


def __getattr__(name: str) -> Any:
    # ``from raygate.cli import serve`` (tests, tools reading its options) gets the command.
    if name == "serve":
        return serve_command()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_serve(**options: Any) -> None:
    """``serve``'s body: ``options`` are every setting's parsed value, by name."""
    import uvicorn
    import zmq

    from .app import create_app

    config = GatewayConfig(**{s.name: options[s.name] for s in declared(GatewayConfig)})
    if config.kernel_encryption == "curve" and not zmq.has("curve"):
        raise click.BadParameter(
            "this pyzmq has no CurveZMQ support (libzmq built without libsodium)",
            param_hint="--kernel-encryption",
        )
    configure_logging(config.log_level, config.log_format.lower())
    log_capacity(*raise_open_files_limit())  # each kernel holds ~8 fds in the gateway
    tls = tls_options(config)
    try:
        app = create_app(config, settings=options)
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
