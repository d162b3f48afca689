"""Settings declared once (raygate/settings.py): the ``serve`` options, variables and file keys
made from them, their parse rules and their precedence. In-process: no gateway is started."""

from __future__ import annotations

import dataclasses

import click
import pytest

from raygate.cli import serve_command, serve_settings
from raygate.config import GatewayConfig
from raygate.launchers import launcher_kinds
from raygate.settings import Items, Size, build, declared, merge, setting

# Every setting `raygate serve` took before settings were declared by their owners. Other tools
# (deployments, systemd units, config files) name them: none may go or be renamed.
SETTINGS_BEFORE = [
    "ip", "port", "auth_token", "allow_origin", "base_url", "max_kernels", "default_kernel_name",
    "prewarm", "kernel_launch_timeout", "max_kernel_launch_timeout", "default_launcher",
    "cull_idle_timeout", "cull_busy_timeout", "cull_warning", "restart_limit", "cull_interval",
    "cull_connected", "cull_busy", "allowed_envs", "kernelspec_dirs", "ws_buffer_bytes",
    "replay_buffer_bytes", "certfile", "keyfile", "client_ca", "ws_compression",
    "ws_ping_interval", "state_dir", "report_ip", "report_port", "report_address", "ssh_hosts",
    "ssh_port", "ssh_user", "ssh_user_from_request", "ssh_key_file", "ssh_known_hosts",
    "ssh_accept_new_host_keys", "ssh_host_selection", "ssh_python", "dask_scheduler",
    "k8s_namespace", "k8s_pod_template", "k8s_kernel_image", "k8s_kernel_namespaces",
    "k8s_kubeconfig", "k8s_context", "k8s_unschedulable_wait", "k8s_scan_interval",
    "yarn_endpoint", "yarn_queue", "yarn_user", "yarn_python", "ray_address", "ray_namespace",
    "ray_num_cpus", "ray_num_gpus", "ray_kernel_cpus", "ray_auth_token_file", "max_kernel_cpus",
    "max_kernel_memory", "max_kernel_gpus", "users_file", "user_header", "allow_users",
    "deny_users", "admin_users", "max_kernels_per_user", "max_gpus_per_user",
    "max_memory_per_user", "discovery_interval", "kernel_encryption", "log_level", "log_format",
    "metrics_public",
    # added by the Kubernetes allow lists
    "k8s_allowed_service_accounts", "k8s_allowed_images", "k8s_allowed_volume_types",
    "k8s_allowed_claims", "k8s_allowed_uids", "k8s_allowed_gids",
    # added by the kernel limits
    "kernel_memory_limit_default", "kernel_cpus_limit_default",
    # added by tenant isolation
    "kernel_isolation", "gateway_key_file",
]  # fmt: skip
FLAGS_BEFORE = {
    "cull_connected", "cull_busy", "ws_compression", "ssh_user_from_request",
    "ssh_accept_new_host_keys", "metrics_public",
}  # fmt: skip


def options_by_name() -> dict[str, click.Option]:
    return {p.name: p for p in serve_command().params if isinstance(p, click.Option)}


def test_every_option_variable_and_key_of_before_is_still_offered() -> None:
    options = options_by_name()
    missing = [name for name in SETTINGS_BEFORE if name not in options]
    assert missing == []
    for name in SETTINGS_BEFORE:
        option = options[name]
        assert "--" + name.replace("_", "-") in option.opts, name
        if name in FLAGS_BEFORE:
            assert "--no-" + name.replace("_", "-") in option.secondary_opts, name
        envvars = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar)
        assert envvars[0] == "RAYGATE_" + name.upper(), name
    assert options["ray_address"].envvar == ["RAYGATE_RAY_ADDRESS", "RAY_ADDRESS"]
    assert options["config"].envvar == "RAYGATE_CONFIG"


def test_the_core_knows_no_launcher_setting() -> None:
    gateway = {s.name for s in declared(GatewayConfig)}
    assert not {n for n in gateway if n.startswith(("ssh_", "k8s_", "yarn_", "ray_", "dask_"))}
    assert not {n for n in gateway if n.startswith("report_")}
    by_owner = {s.name: owner for owner, s in serve_settings()}
    assert {name for name, owner in by_owner.items() if owner == "the gateway"} == gateway
    assert by_owner["ssh_hosts"] == "launcher 'ssh'"
    assert by_owner["ray_address"] == "launcher 'ray'"
    assert by_owner["k8s_namespace"] == "launcher 'kubernetes'"


def test_builtin_launchers_come_from_entry_points() -> None:
    kinds = launcher_kinds()
    assert set(kinds) >= {"local", "ray", "ssh", "dask", "kubernetes", "yarn"}
    assert kinds["local"].__module__ == "raygate.launchers.local"
    assert kinds["ray"].__module__.startswith("raygate.launchers.ray")


def parse(*args: str) -> dict:
    """The values ``serve`` would run with (click's own parsing; nothing is started)."""
    ctx = serve_command().make_context("serve", list(args))
    return ctx.params


def test_option_over_variable_over_file_over_default(tmp_path, monkeypatch) -> None:
    for name in ("RAYGATE_MAX_KERNELS", "RAYGATE_SSH_PORT", "RAYGATE_YARN_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "raygate.toml"
    config.write_text('max_kernels = 1\nssh_port = 2201\nyarn_queue = "from-file"\n')
    assert parse()["max_kernels"] == 0  # the default
    assert parse("--config", str(config))["max_kernels"] == 1  # file over default
    monkeypatch.setenv("RAYGATE_MAX_KERNELS", "3")
    monkeypatch.setenv("RAYGATE_SSH_PORT", "2202")
    values = parse("--config", str(config))
    assert (values["max_kernels"], values["ssh_port"]) == (3, 2202)  # variable over file
    assert values["yarn_queue"] == "from-file"
    values = parse("--config", str(config), "--max-kernels", "5", "--ssh-port", "2203")
    assert (values["max_kernels"], values["ssh_port"]) == (5, 2203)  # option over variable
    # RAYGATE_CONFIG names the file too
    monkeypatch.setenv("RAYGATE_CONFIG", str(config))
    assert parse()["yarn_queue"] == "from-file"


def test_a_flag_from_each_source(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RAYGATE_CULL_BUSY", raising=False)
    config = tmp_path / "raygate.toml"
    config.write_text("cull_busy = true\n")
    assert parse()["cull_busy"] is False
    assert parse("--config", str(config))["cull_busy"] is True
    monkeypatch.setenv("RAYGATE_CULL_BUSY", "false")
    assert parse("--config", str(config))["cull_busy"] is False
    assert parse("--config", str(config), "--cull-busy")["cull_busy"] is True


def test_lists_parse_from_text_and_from_toml_lists(tmp_path) -> None:
    config = tmp_path / "raygate.toml"
    config.write_text('allow_users = ["ada", " grace "]\nssh_hosts = "h1, h2:2222,"\n')
    values = parse("--config", str(config))
    assert values["allow_users"] == ["ada", "grace"]
    assert values["ssh_hosts"] == ["h1", "h2:2222"]
    values = parse("--allowed-envs", "FOO,,BAR", "--kernelspec-dirs", "/a::/b")
    assert values["allowed_envs"] == ["FOO", "BAR"]
    assert values["kernelspec_dirs"] == ["/a", "/b"]
    assert parse("--k8s-kernel-namespaces", "a, b")["k8s_kernel_namespaces"] == ["a", "b"]
    assert parse()["allow_users"] == []


def test_sizes_and_prewarm_parse_and_bad_values_name_the_option() -> None:
    values = parse("--max-kernel-memory", "16Gi", "--max-memory-per-user", "0")
    assert values["max_kernel_memory"] == 16 * 1024**3
    assert values["max_memory_per_user"] == 0
    assert parse()["max_kernel_memory"] == 0
    assert parse("--prewarm", "python3=2, py-gpu=1")["prewarm"] == {"python3": 2, "py-gpu": 1}
    assert parse()["prewarm"] == {}
    for args, hint in [
        (["--max-kernel-memory", "lots"], "--max-kernel-memory"),
        (["--prewarm", "python3=0"], "--prewarm"),
        (["--ssh-host-selection", "random"], "--ssh-host-selection"),
        (["--port", "70000"], "--port"),
    ]:
        with pytest.raises(click.BadParameter) as exc:
            parse(*args)
        assert exc.value.param is not None and hint in exc.value.param.opts


def test_choices_ignore_case_where_they_did() -> None:
    values = parse("--log-level", "DEBUG", "--kernel-encryption", "Curve", "--log-format", "JSON")
    assert (values["log_level"], values["kernel_encryption"], values["log_format"]) == (
        "debug",
        "curve",
        "json",
    )


def test_a_config_file_with_an_unknown_key_is_refused(tmp_path) -> None:
    config = tmp_path / "raygate.toml"
    config.write_text("max_kernelz = 1\n")
    with pytest.raises(click.BadParameter, match=r"unknown setting.*max_kernelz"):
        parse("--config", str(config))


def test_declarations_build_their_dataclass() -> None:
    @dataclasses.dataclass
    class Demo:
        demo_names: list[str] = setting([], "Names.", Items())
        demo_size: int = setting(0, "A size.", Size())
        internal: int = 3

    assert [s.name for s in declared(Demo)] == ["demo_names", "demo_size"]
    built = build(Demo, {"demo_names": ["a"], "unrelated": 1})
    assert (built.demo_names, built.demo_size, built.internal) == (["a"], 0, 3)
    assert Demo().demo_names is not Demo().demo_names  # each instance its own list
    setting_ = declared(Demo)[0]
    assert (setting_.option, setting_.envvar) == ("--demo-names", "RAYGATE_DEMO_NAMES")


def test_two_owners_declaring_one_name_differently_is_an_error() -> None:
    @dataclasses.dataclass
    class One:
        shared_name: str = setting("", "One's.")

    @dataclasses.dataclass
    class Other:
        shared_name: str = setting("x", "Other's.")

    with pytest.raises(ValueError, match=r"shared_name.*both one and other"):
        list(merge({"one": One, "other": Other}))
