"""The gateway's settings, one dataclass shared by the CLI, the app and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GatewayConfig:
    ip: str = "127.0.0.1"
    port: int = 8888
    auth_token: str = ""
    allow_origin: str = ""
    base_url: str = "/"
    max_kernels: int = 0
    """0: no limit."""
    default_kernel_name: str = "python3"
    prewarm: dict[str, int] = field(default_factory=dict)
    """Warm kernels to keep ready per kernelspec (``{"python3": 2}``), handed out on start
    to requests that fit them (raygate/kernels/pool.py); they count against max_kernels."""
    kernel_launch_timeout: float = 60.0
    max_kernel_launch_timeout: float = 600.0
    default_launcher: str = "ray"
    cull_idle_timeout: float = 0.0
    """Seconds an idle kernel may go without a message before it is shut down (0: never)."""
    cull_interval: float = 300.0
    """Seconds between checks for kernels to cull (more often when the warning needs it)."""
    cull_connected: bool = False
    cull_busy: bool = False
    """Compatibility: busy kernels use the idle timeout, unless cull_busy_timeout is set."""
    cull_busy_timeout: float = 0.0
    """Seconds a busy kernel may go without a message before it is shut down (0: never)."""
    cull_warning: float = 60.0
    """Seconds before a cull that connected clients are warned (capped to the timeout; 0: no
    warning). Any activity after the warning cancels the cull."""
    log_level: str = "info"
    log_format: str = "text"
    """``text`` or ``json`` (one object per line); either way records carry the kernel id."""
    metrics_public: bool = False
    """Serve ``/metrics`` without the token (for a Prometheus that cannot send one)."""
    allowed_envs: list[str] = field(default_factory=list)
    """Variables other than ``KERNEL_*`` that a start request may pass to its kernel."""
    kernelspec_dirs: list[str] = field(default_factory=list)
    ws_buffer_bytes: int = 64 * 1024 * 1024
    ws_ping_interval: float = 30.0
    certfile: str = ""
    keyfile: str = ""
    client_ca: str = ""
    """With a CA bundle, clients must present a certificate it signed."""
    ws_compression: bool = False
    replay_buffer_bytes: int = 32 * 1024 * 1024
    """Output kept per disconnected session, replayed when it reconnects (0: none)."""
    ws_max_message_bytes: int = 256 * 1024 * 1024
    monitor_interval: float = 1.0
    restart_limit: int = 5
    """Automatic restarts of a kernel that died, before it is declared dead."""
    # Remote kernels (SSH, Dask): the bootstrap's report listener and reattach records.
    state_dir: str = ""
    """Where remote launchers keep what they need to find their kernels again, and the
    gateway its delivery watermarks (what each session was last sent)."""
    report_ip: str = "0.0.0.0"
    report_port: int = 0
    report_address: str = ""
    """Address bootstraps reach the report listener at (default: found per host)."""
    ssh_hosts: list[str] = field(default_factory=list)
    ssh_port: int = 22
    ssh_user: str = ""
    ssh_user_from_request: bool = False
    ssh_key_file: str = ""
    ssh_known_hosts: str = ""
    ssh_accept_new_host_keys: bool = False
    ssh_host_selection: str = "round-robin"
    ssh_python: str = ""
    dask_scheduler: str = ""
    # Kubernetes: kernels as pods (launchers/kubernetes.py).
    k8s_namespace: str = ""
    """Namespace of kernel pods (default: the kubeconfig context's, or the gateway pod's)."""
    k8s_pod_template: str = ""
    """Pod template file (default: k8s/kernel-pod.yaml of raygate's source tree)."""
    k8s_kernel_image: str = ""
    k8s_kernel_namespaces: str = ""
    """Comma-separated namespaces KERNEL_NAMESPACE may name besides k8s_namespace ('*': any)."""
    k8s_kubeconfig: str = ""
    k8s_context: str = ""
    k8s_unschedulable_wait: float = 0.0
    k8s_scan_interval: float = 30.0
    # What a start request may choose about its pod (launchers/kubernetes/policy.py).
    k8s_allowed_service_accounts: str = ""
    k8s_allowed_images: str = ""
    k8s_allowed_volume_types: str = "emptyDir"
    k8s_allowed_claims: str = ""
    k8s_allowed_uids: str = ""
    k8s_allowed_gids: str = ""
    # YARN: kernels as application masters (launchers/yarn.py).
    yarn_endpoint: str = ""
    yarn_queue: str = "default"
    yarn_user: str = ""
    yarn_python: str = ""
    # Ray: where kernels run as actors, and what one kernel may ask for.
    ray_address: str = ""
    """An existing Ray cluster to join; empty: start a local Ray for this gateway."""
    ray_namespace: str = "raygate"
    ray_num_cpus: float = 0.0
    """Logical CPUs of the embedded Ray (0: the machine's count, at least 16)."""
    ray_num_gpus: float | None = None
    """GPUs of the embedded Ray (None: those Ray detects)."""
    ray_kernel_cpus: float = 1.0
    """CPUs a Ray kernel reserves when neither its kernelspec nor its request says."""
    ray_auth_token_file: str = ""
    """File holding the Ray cluster's auth token (token authentication)."""
    max_kernel_cpus: float = 0.0
    """The most CPUs one kernel may ask for (0: no cap); likewise memory (bytes) and GPUs."""
    max_kernel_memory: int = 0
    max_kernel_gpus: float = 0.0
    kernel_memory_limit_default: int = 0
    """Memory limit (bytes) of kernels whose request and kernelspec set none (0: none);
    enforced by each kernel's supervisor (launchers/kernelside/limits.py), as are theirs."""
    kernel_cpus_limit_default: float = 0.0
    """CPU limit of kernels whose request and kernelspec set none (0: none)."""
    # Users: identity, who may start kernels, and per-user caps (raygate/users.py).
    users_file: str = ""
    """TOML or JSON file mapping token -> username: each user authenticates with their own."""
    user_header: str = ""
    """Header an authenticating proxy sets to the user's name (empty: none is trusted)."""
    allow_users: list[str] = field(default_factory=list)
    """Users who may start kernels (empty: everyone not denied)."""
    deny_users: list[str] = field(default_factory=list)
    admin_users: list[str] = field(default_factory=list)
    """Authenticated users who see and control every user's kernels."""
    max_kernels_per_user: int = 0
    """The most kernels one user holds, starts in flight included (0: no cap)."""
    max_gpus_per_user: float = 0.0
    """The most GPUs one user's kernels ask for together (0: no cap); likewise memory."""
    max_memory_per_user: int = 0
    discovery_interval: float = 2.0
    """Seconds between looks for kernels other gateway replicas started (0: never)."""
    kernel_encryption: str = "none"
    """``curve``: kernels started by this gateway are CurveZMQ servers (keys made on the
    kernel's host) and the gateway talks to them as a Curve client; ``none``: plain ZMQ."""

    def __post_init__(self) -> None:
        base = "/" + self.base_url.strip("/")
        self.base_url = base if base == "/" else base + "/"
