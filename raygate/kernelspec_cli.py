"""``raygate kernelspec``: write and list kernelspecs with a resource request and launcher.

``raygate kernelspec create --name py-gpu --gpus 1 --memory 16Gi --cpus 4`` writes an
ipykernel kernelspec whose ``metadata.raygate`` holds the request in the form
:mod:`raygate.resources` reads, checked by that same parser, so a value the gateway would
refuse is refused here, in the same words.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

import click

from raygate.launchers.base import InvalidKernelSpecMetadata, KernelSpecMetadata

from .resources import InvalidResourceRequest, request_for, resource_request

LAUNCHERS = ("ray", "local", "ssh", "dask", "kubernetes", "yarn")
KERNELSPEC_DIRS_ENV = "RAYGATE_KERNELSPEC_DIRS"


def _key_values(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint=what)
        out[name.strip()] = value.strip()
    return out


def _number(value: Any) -> Any:
    """``4`` rather than ``4.0`` in kernel.json, fractions (and non-numbers) kept."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _custom_amount(amount: str) -> float | str:
    try:
        return float(amount)
    except ValueError:
        return amount  # left for the parser below to refuse in its own words


def build_metadata(
    *,
    launcher: str | None = None,
    cpus: float | None = None,
    cpus_limit: float | None = None,
    memory: str | None = None,
    memory_limit: str | None = None,
    gpus: float | None = None,
    gpus_limit: float | None = None,
    custom: dict[str, str] | None = None,
    accelerator_type: str | None = None,
    node_labels: dict[str, str] | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The kernelspec's ``metadata.raygate``; raises :class:`InvalidResourceRequest`."""
    resources: dict[str, Any] = {}
    for key, value in (("cpus", cpus), ("cpus_limit", cpus_limit)):
        if value is not None:
            resources[key] = _number(value)
    for key, size in (("memory", memory), ("memory_limit", memory_limit)):
        if size is not None:
            resources[key] = size.strip()
    for key, value in (("gpus", gpus), ("gpus_limit", gpus_limit)):
        if value is not None:
            resources[key] = _number(value)
    if custom:
        resources["custom"] = {
            name: _number(_custom_amount(amount)) for name, amount in custom.items()
        }
    if accelerator_type:
        resources["accelerator_type"] = accelerator_type
    if node_labels:
        resources["node_labels"] = dict(node_labels)
    metadata: dict[str, Any] = {}
    if launcher:
        metadata["launcher"] = launcher
    if resources:
        metadata["resources"] = resources
    if runtime_env:
        metadata["runtime_env"] = runtime_env
    resource_request(metadata)  # the gateway's own parser: same checks, same messages
    return metadata


def kernel_json(
    display_name: str, metadata: dict[str, Any], env: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "metadata": {"raygate": metadata} if metadata else {},
    }
    if env:
        spec["env"] = env
    return spec


def _write_spec_dir(path: str, spec: dict[str, Any]) -> None:
    from ipykernel.kernelspec import RESOURCES

    os.makedirs(path, exist_ok=True)
    for filename in sorted(os.listdir(RESOURCES)):
        if filename.startswith("logo-"):
            shutil.copy(os.path.join(RESOURCES, filename), os.path.join(path, filename))
    with open(os.path.join(path, "kernel.json"), "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")


def install(
    name: str,
    spec: dict[str, Any],
    *,
    user: bool = False,
    prefix: str | None = None,
    directory: str | None = None,
    replace: bool = False,
) -> str:
    """Write the kernelspec and return its directory. ``directory`` is a kernels directory
    (the kind ``--kernelspec-dirs`` lists); otherwise jupyter_client's places: ``user``, a
    ``prefix``, or by default this Python's environment (``sys.prefix``)."""
    from jupyter_client.kernelspec import KernelSpecManager, _is_valid_kernel_name

    if not _is_valid_kernel_name(name):
        raise click.BadParameter(
            f"{name!r}: kernelspec names may hold only ASCII letters, digits, '.', '-' and '_'",
            param_hint="--name",
        )
    if directory:
        target = os.path.join(os.path.abspath(directory), name.lower())
        if os.path.exists(target):
            if not replace:
                raise click.ClickException(f"{target} exists (--replace overwrites it)")
            shutil.rmtree(target)
        _write_spec_dir(target, spec)
        return target
    manager = KernelSpecManager()
    destination = manager._get_destination_dir(
        name.lower(), user=user, prefix=None if user else (prefix or sys.prefix)
    )
    if os.path.exists(destination) and not replace:
        raise click.ClickException(f"{destination} exists (--replace overwrites it)")
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, name)
        _write_spec_dir(source, spec)
        return manager.install_kernel_spec(
            source, name, user=user, prefix=None if user else (prefix or sys.prefix)
        )


@click.group("kernelspec")
def kernelspec() -> None:
    """Write and list kernelspecs with a resource request and launcher."""


@kernelspec.command("create")
@click.option("--name", required=True, help="Kernelspec name (the name clients start).")
@click.option("--display-name", default="", help="Name shown in notebooks (default: --name).")
@click.option(
    "--launcher",
    type=click.Choice(LAUNCHERS),
    default=None,
    help="Where its kernels run (default: the gateway's --default-launcher).",
)
@click.option("--cpus", type=float, default=None, help="CPUs to reserve.")
@click.option("--cpus-limit", type=float, default=None, help="CPUs it may use at most.")
@click.option("--memory", default=None, help="Memory to reserve: 16Gi, 512M, or bytes.")
@click.option("--memory-limit", default=None, help="Memory it may use at most.")
@click.option("--gpus", type=float, default=None, help="GPUs to reserve (fractions allowed).")
@click.option("--gpus-limit", type=float, default=None, help="GPUs it may use at most.")
@click.option(
    "--resource",
    "custom",
    multiple=True,
    metavar="NAME=AMOUNT",
    help="A custom resource to reserve (Ray: a node resource), repeatable.",
)
@click.option("--accelerator-type", default=None, help="Accelerator type, e.g. A100.")
@click.option(
    "--node-label",
    "node_labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label the node must carry, repeatable.",
)
@click.option(
    "--runtime-env-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="JSON file with the Ray runtime_env of its kernels (env_vars, pip, working_dir, ...).",
)
@click.option(
    "--env", "env", multiple=True, metavar="NAME=VALUE", help="Kernel environment, repeatable."
)
@click.option("--user", is_flag=True, help="Install for this user (jupyter's user data dir).")
@click.option("--prefix", default=None, help="Install under PREFIX/share/jupyter/kernels.")
@click.option(
    "--dir",
    "directory",
    default=None,
    help="Write into this kernels directory (e.g. one given to raygate serve --kernelspec-dirs).",
)
@click.option("--replace", is_flag=True, help="Overwrite a kernelspec of that name.")
def create(
    name: str,
    display_name: str,
    launcher: str | None,
    cpus: float | None,
    cpus_limit: float | None,
    memory: str | None,
    memory_limit: str | None,
    gpus: float | None,
    gpus_limit: float | None,
    custom: tuple[str, ...],
    accelerator_type: str | None,
    node_labels: tuple[str, ...],
    runtime_env_file: str | None,
    env: tuple[str, ...],
    user: bool,
    prefix: str | None,
    directory: str | None,
    replace: bool,
) -> None:
    """Write an ipykernel kernelspec (this Python) that asks for resources.

    Installed by default into this Python's environment (sys.prefix/share/jupyter/kernels),
    where a gateway running from it finds it.
    """
    if sum(bool(x) for x in (user, prefix, directory)) > 1:
        raise click.UsageError("give at most one of --user, --prefix and --dir")
    runtime_env = None
    if runtime_env_file:
        try:
            with open(runtime_env_file) as f:
                runtime_env = json.load(f)
        except ValueError as exc:
            raise click.BadParameter(
                f"{runtime_env_file}: not JSON: {exc}", param_hint="--runtime-env-file"
            ) from None
        if not isinstance(runtime_env, dict):
            raise click.BadParameter(
                f"{runtime_env_file}: must hold a JSON object", param_hint="--runtime-env-file"
            )
    try:
        metadata = build_metadata(
            launcher=launcher,
            cpus=cpus,
            cpus_limit=cpus_limit,
            memory=memory,
            memory_limit=memory_limit,
            gpus=gpus,
            gpus_limit=gpus_limit,
            custom=_key_values(custom, "--resource"),
            accelerator_type=accelerator_type,
            node_labels=_key_values(node_labels, "--node-label"),
            runtime_env=runtime_env,
        )
    except InvalidResourceRequest as exc:
        raise click.UsageError(f"bad resource request: {exc}") from None
    spec = kernel_json(display_name or name, metadata, _key_values(env, "--env"))
    path = install(name, spec, user=user, prefix=prefix, directory=directory, replace=replace)
    click.echo(f"wrote kernelspec {name} in {path}")


@kernelspec.command("list")
@click.option(
    "--kernelspec-dirs",
    default="",
    envvar=KERNELSPEC_DIRS_ENV,
    show_envvar=True,
    help="Extra directories searched first, as raygate serve --kernelspec-dirs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_specs(kernelspec_dirs: str, as_json: bool) -> None:
    """List the kernelspecs a gateway would offer, with their launcher and resources."""
    from .kernelspecs import KernelSpecs

    specs = KernelSpecs(extra_dirs=[d for d in kernelspec_dirs.split(":") if d.strip()])
    rows = {}
    for name in specs.names():
        try:
            spec = specs.get(name)
        except Exception as exc:  # a broken kernelspec on disk: say so, list the rest
            rows[name] = {"error": str(exc)}
            continue
        launcher = ""
        try:
            raygate = KernelSpecMetadata.parse((spec.metadata or {}).get("raygate"))
            launcher = raygate.launcher or ""
            request = request_for(raygate.resources).describe()
        except (InvalidKernelSpecMetadata, InvalidResourceRequest) as exc:
            request = f"invalid: {exc}"
        rows[name] = {
            "display_name": spec.display_name,
            "path": spec.resource_dir,
            "launcher": launcher,
            "resources": request,
        }
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for name, row in rows.items():
        if "error" in row:
            click.echo(f"{name}  (broken: {row['error']})")
            continue
        launcher = row["launcher"] or "default launcher"
        click.echo(f"{name}  [{launcher}; {row['resources']}]  {row['path']}")
