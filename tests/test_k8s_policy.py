"""The Kubernetes allow lists, without a cluster: what a start request may choose about its
pod (service account, image, volumes, uid and gid), the 400s for everything else, and
the startup errors for lists that are malformed or can never match."""

from __future__ import annotations

import json
from typing import Any

import pytest

from raygate.launchers.base import KernelSpecInfo, KernelStartError, LaunchRequest
from raygate.launchers.kubernetes.policy import AllowLists, PolicyError

TEMPLATE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "spec": {
        "securityContext": {"runAsUser": 1000, "runAsGroup": 100},
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "sidecar-creds", "secret": {"secretName": "creds"}},
        ],
        "containers": [
            {
                "name": "kernel",
                "image": "kernels/python:1",
                "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
            },
            {"name": "sidecar", "image": "proxy:1"},
        ],
    },
}


def request(env: dict[str, Any], username: str | None = "alice", image: str = "") -> LaunchRequest:
    kubernetes = {"image": image} if image else {}
    spec = KernelSpecInfo(
        name="k8s", argv=["python"], metadata={"raygate": {"kubernetes": kubernetes}}
    )
    env = {k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}
    return LaunchRequest(kernel_id="k", spec=spec, env=env, launch_timeout=30.0, username=username)


def refused(allow: AllowLists, env: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(KernelStartError) as caught:
        allow.check(request(env, **kwargs), TEMPLATE, "default/kernel:2")
    assert caught.value.status == 400
    return str(caught.value)


DEFAULT = AllowLists.parse()


def test_defaults_allow_only_what_the_operator_configured() -> None:
    for env in (
        {},
        {"KERNEL_SERVICE_ACCOUNT_NAME": "default"},
        {"KERNEL_IMAGE": "kernels/python:1"},  # the template's
        {"KERNEL_IMAGE": "default/kernel:2"},  # --k8s-kernel-image
        {"KERNEL_UID": "1000", "KERNEL_GID": "100"},  # the template's own
        {
            "KERNEL_VOLUMES": [{"name": "data", "emptyDir": {}}],
            "KERNEL_VOLUME_MOUNTS": [
                {"name": "data", "mountPath": "/data"},
                {"name": "scratch", "mountPath": "/scratch"},
            ],
        },
    ):
        DEFAULT.check(request(env), TEMPLATE, "default/kernel:2")
    DEFAULT.check(request({"KERNEL_IMAGE": "spec/image"}, image="spec/image"), TEMPLATE)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KERNEL_SERVICE_ACCOUNT_NAME": "raygate"},
            "KERNEL_SERVICE_ACCOUNT_NAME=raygate is not allowed here (allowed: default; "
            "see --k8s-allowed-service-accounts)",
        ),
        (
            {"KERNEL_IMAGE": "evil/image:1"},
            "KERNEL_IMAGE=evil/image:1 is not allowed here (allowed: default/kernel:2, "
            "kernels/python:1; see --k8s-allowed-images)",
        ),
        (
            {"KERNEL_UID": "1234"},
            "KERNEL_UID=1234 is not allowed here (allowed: 1000; see --k8s-allowed-uids)",
        ),
        (
            {"KERNEL_GID": "5"},
            "KERNEL_GID=5 is not allowed here (allowed: 100; see --k8s-allowed-gids)",
        ),
        ({"KERNEL_UID": "0"}, "KERNEL_UID=0: kernels do not run as root"),
        ({"KERNEL_GID": "0"}, "KERNEL_GID=0: kernels do not run as root"),
        ({"KERNEL_UID": "1e3"}, "KERNEL_UID must be a number, not '1e3'"),
    ]
    + [
        (
            {"KERNEL_VOLUMES": [{"name": "v", kind: {}}]},
            f"KERNEL_VOLUMES: volume 'v' is a {kind} volume, which is not allowed here "
            "(allowed volume types: emptyDir; see --k8s-allowed-volume-types)",
        )
        for kind in ("secret", "projected", "hostPath", "nfs", "configMap", "csi")
    ]
    + [
        (
            {"KERNEL_VOLUMES": [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}]},
            "KERNEL_VOLUMES: volume 'v' claims c, which is not allowed here (allowed claims: "
            "none; see --k8s-allowed-claims)",
        ),
        (
            {"KERNEL_VOLUMES": [{"name": "v", "emptyDir": {}, "secret": {}}]},
            "volume 'v' must have exactly one volume type, not emptyDir, secret",
        ),
        (
            {"KERNEL_VOLUMES": [{"name": "scratch", "emptyDir": {}}]},
            "KERNEL_VOLUMES: the pod already has a volume named 'scratch'",
        ),
        (
            # the template's Secret volume is the sidecar's: the kernel may not mount it
            {"KERNEL_VOLUME_MOUNTS": [{"name": "sidecar-creds", "mountPath": "/x"}]},
            "KERNEL_VOLUME_MOUNTS: 'sidecar-creds' is not a volume of KERNEL_VOLUMES",
        ),
        ({"KERNEL_VOLUMES": "{"}, "KERNEL_VOLUMES is not valid JSON"),
    ],
)
def test_defaults_refuse_the_rest(env: dict[str, Any], message: str) -> None:
    assert message in refused(DEFAULT, env)


def test_operator_lists_widen_the_choice() -> None:
    allow = AllowLists.parse(
        service_accounts="kernels, team-*",
        images="registry.example/kernels/*,registry.example/users/{username}/*",
        volume_types="emptyDir,configMap,hostPath",
        claims="claim-{username},shared-[ab]",
        uids="2000-2999,65534",
        gids="65534",
    )
    ok = [
        {"KERNEL_SERVICE_ACCOUNT_NAME": "kernels"},
        {"KERNEL_SERVICE_ACCOUNT_NAME": "team-blue"},
        {"KERNEL_IMAGE": "registry.example/kernels/py:3.12"},
        {"KERNEL_IMAGE": "registry.example/users/alice/mine:1"},
        {"KERNEL_UID": "2999", "KERNEL_GID": "65534"},
        {"KERNEL_UID": "65534"},
        {
            "KERNEL_VOLUMES": [
                {"name": "a", "configMap": {"name": "settings"}},
                {"name": "b", "hostPath": {"path": "/data"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "claim-alice"}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "shared-b"}},
            ]
        },
    ]
    for env in ok:
        allow.check(request(env), TEMPLATE)
    assert "allowed: default, kernels, team-*;" in refused(
        allow, {"KERNEL_SERVICE_ACCOUNT_NAME": "raygate"}
    )
    refused(allow, {"KERNEL_IMAGE": "registry.example/users/bob/x:1"})  # alice's only
    assert "(allowed: 1000, 2000-2999, 65534;" in refused(allow, {"KERNEL_UID": "3000"})
    # another user's claim, and no user at all
    other = {"KERNEL_VOLUMES": [{"name": "c", "persistentVolumeClaim": {"claimName": "claim-bob"}}]}
    assert "(allowed claims: claim-alice, shared-[ab];" in refused(allow, other)
    mine = {"KERNEL_VOLUMES": [{"name": "c", "persistentVolumeClaim": {"claimName": "claim-"}}]}
    refused(allow, mine, username=None)
    assert "secret volume" in refused(allow, {"KERNEL_VOLUMES": [{"name": "s", "secret": {}}]})


def test_a_username_is_never_a_pattern() -> None:
    allow = AllowLists.parse(claims="claim-{username}")
    env = {"KERNEL_VOLUMES": [{"name": "c", "persistentVolumeClaim": {"claimName": "claim-bob"}}]}
    refused(allow, env, username="*")
    refused(allow, env, username="b?b")
    allow.check(request(env, username="bob"), TEMPLATE)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"images": "registry/[kernels"}, "--k8s-allowed-images: 'registry/[kernels' has a '['"),
        ({"images": "my image"}, "'my image' can never match: an image reference has no such"),
        ({"service_accounts": "Kernels"}, "'Kernels' can never match: a name has no such"),
        ({"service_accounts": "sa_1"}, "--k8s-allowed-service-accounts: 'sa_1' can never match"),
        ({"claims": "claim-{user}"}, "--k8s-allowed-claims: 'claim-{user}': the only placeholder"),
        ({"claims": "claim-}"}, "has a '}' without its '{'"),
        ({"volume_types": "emptydir"}, "'emptydir' is not a Kubernetes volume type"),
        ({"volume_types": "persistentVolumeClaim"}, "list the claims in --k8s-allowed-claims"),
        ({"uids": "0-100"}, "--k8s-allowed-uids: '0-100' allows 0, and kernels never run as root"),
        ({"gids": "0"}, "--k8s-allowed-gids: '0' allows 0"),
        ({"uids": "10-5"}, "'10-5' is an empty range"),
        ({"uids": "nobody"}, "'nobody' is not an id or a range like 1000-1999"),
    ],
)
def test_bad_lists_are_startup_errors(settings: dict[str, str], words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        AllowLists.parse(**settings)
    assert words in str(caught.value)


def test_users_mode_takes_no_ids_from_the_request() -> None:
    allow = AllowLists.parse(uids="1000-1999", gids="100")
    for var, value in (("KERNEL_UID", "1000"), ("KERNEL_GID", "100")):
        req = request({var: value})
        allow.check(req, TEMPLATE)  # isolation off: in the allow list
        req.account, req.account_ids = "alice", (4321, 4322)
        with pytest.raises(KernelStartError) as caught:
            allow.check(req, TEMPLATE)
        assert caught.value.status == 400
        assert f"{var} is not accepted here" in str(caught.value), str(caught.value)
        assert "--kernel-isolation users" in str(caught.value)
