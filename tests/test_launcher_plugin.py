"""A launcher in another package, registered under the ``raygate.launchers`` entry points: the
example of docs/launchers.md, installed for real with pip, used by a real ``raygate serve``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ServerProcess
from kernelspecs import ipykernel_argv, write_kernelspec

EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "raygate-hello-launcher"


def pip_install(package: Path, target: Path) -> None:
    """``pip install`` into ``target``, as an operator would into a gateway's environment."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
        + ["--target", str(target), str(package)],
        check=True,
        capture_output=True,
        timeout=240,
    )


def with_path(target: Path) -> dict[str, str]:
    paths = [str(target), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raygate", "serve", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The gateway environment with the example launcher package installed."""
    target = tmp_path_factory.mktemp("site")
    pip_install(EXAMPLE, target)
    assert list(target.glob("raygate_hello_launcher-*.dist-info"))
    return with_path(target)


def test_its_setting_is_in_help(hello: dict[str, str]) -> None:
    out = " ".join(serve("--help", env=hello).stdout.split())
    assert "--hello-greeting TEXT What kernels of the hello launcher find in HELLO_GREETING." in out
    assert "[env var: RAYGATE_HELLO_GREETING; default: hello]" in out
    assert "--ssh-hosts" in out  # raygate's own launchers stay


async def test_a_kernelspec_naming_its_kind_runs_there_with_its_setting(
    hello: dict[str, str], start_server, tmp_path
) -> None:
    specs = tmp_path / "kernels"
    write_kernelspec(
        str(specs), "hello-py", ipykernel_argv(), metadata={"raygate": {"launcher": "hello"}}
    )
    config = tmp_path / "raygate.toml"
    config.write_text('hello_greeting = "from the file"\n')
    # option over variable over file
    server: ServerProcess = start_server(
        "--default-launcher", "local", "--kernelspec-dirs", str(specs),
        "--config", str(config), "--hello-greeting", "from the option",
        env={**hello, "RAYGATE_HELLO_GREETING": "from the variable"},
    )  # fmt: skip
    kernel = server.client.start_kernel("hello-py")
    assert kernel["launcher"] == "hello"
    result = await server.client.run(kernel["id"], "import os; print(os.environ['HELLO_GREETING'])")
    assert result.stdout.strip() == "from the option"
    other = server.client.start_kernel("python3")  # the default launcher's, not greeted
    assert other["launcher"] == "local"
    result = await server.client.run(
        other["id"], "import os; print('HELLO_GREETING' in os.environ)"
    )
    assert result.stdout.strip() == "False"


async def test_it_can_be_the_default_launcher(hello: dict[str, str], start_server) -> None:
    server: ServerProcess = start_server(
        "--default-launcher", "hello", env={**hello, "RAYGATE_HELLO_GREETING": "from the variable"}
    )
    kernel = server.client.start_kernel()
    assert kernel["launcher"] == "hello"
    result = await server.client.run(kernel["id"], "import os; print(os.environ['HELLO_GREETING'])")
    assert result.stdout.strip() == "from the variable"


def test_an_unknown_kind_is_a_startup_error_listing_the_known(tmp_path, refused_serve) -> None:
    specs = tmp_path / "kernels"
    write_kernelspec(
        str(specs), "lost", ipykernel_argv(), metadata={"raygate": {"launcher": "nowhere"}}
    )
    r = refused_serve("--default-launcher", "local", "--kernelspec-dirs", str(specs))
    assert r.exit_code == 2, r.output
    assert "kernelspec 'lost'" in r.stderr and "'nowhere'" in r.stderr
    assert "known launchers: dask, kubernetes, local, ray, ssh, yarn" in " ".join(r.stderr.split())
    r = refused_serve("--default-launcher", "nowhere")
    assert r.exit_code == 2, r.output
    assert "'nowhere' is not one of: dask, kubernetes, local, ray, ssh, yarn" in r.stderr


def test_a_plugin_that_fails_to_import_is_a_startup_error(tmp_path) -> None:
    package = tmp_path / "broken"
    package.mkdir()
    (package / "pyproject.toml").write_text(
        (EXAMPLE / "pyproject.toml")
        .read_text()
        .replace("raygate-hello-launcher", "raygate-broken-launcher")
        .replace('hello = "hello_launcher:HelloLauncher"', 'broken = "broken_launcher:Broken"')
        .replace('"hello_launcher"', '"broken_launcher"')
    )
    (package / "broken_launcher.py").write_text("import a_module_nobody_installed\n")
    target = tmp_path / "site"
    pip_install(package, target)
    for args in (["--help"], ["--default-launcher", "local"]):
        r = serve(*args, env=with_path(target))
        assert r.returncode == 2, r.stderr
        message = " ".join(r.stderr.split())
        assert (
            "launcher 'broken' (broken_launcher:Broken, entry point of raygate-broken-launcher)"
            in message
        )
        assert "No module named 'a_module_nobody_installed'" in message
