"""The Kubernetes API client, imported only when a cluster is configured.

Importing the official client takes seconds (2.7 s here), which every ``raygate serve``
would pay with no kernel on Kubernetes; so nothing of it is imported at module level in
this package, and :func:`load_client` imports it only once it found a configuration.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes import client as k8s_client
    from kubernetes.client.rest import ApiException

SERVICEACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def api_exception() -> type[ApiException]:
    """The client's API error class (for ``except``), imported on first use."""
    from kubernetes.client.rest import ApiException

    return ApiException


def transport_error() -> type[Exception]:
    """What the client raises when the API server gives no answer at all (refused, reset,
    timed out, TLS failed): urllib3's base error, imported on first use."""
    import urllib3

    return urllib3.exceptions.HTTPError


def config_exception() -> type[Exception]:
    from kubernetes.config import ConfigException

    return ConfigException


def api_message(exc: ApiException) -> str:
    """The message of a Kubernetes ``Status`` error, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
        return str(body.get("message") or exc.reason)
    except (ValueError, TypeError, AttributeError):
        return f"{exc.status} {exc.reason}"


def load_client(kubeconfig: str = "", context: str = "") -> tuple[k8s_client.CoreV1Api, str] | None:
    """A client for the configured cluster and its default namespace: ``kubeconfig``, else
    the pod's service account when running in a cluster, else ``$KUBECONFIG`` or
    ``~/.kube/config``; None when there is none (the launcher then only refuses starts)."""
    default_file = os.path.expanduser(os.environ.get("KUBECONFIG") or "~/.kube/config")
    in_cluster = not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST")
    if not (in_cluster or kubeconfig or os.path.exists(default_file.split(os.pathsep)[0])):
        return None
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    cfg = k8s_client.Configuration()
    namespace = ""
    if in_cluster:
        k8s_config.load_incluster_config(client_configuration=cfg)
        try:
            with open(SERVICEACCOUNT_NAMESPACE) as f:
                namespace = f.read().strip()
        except OSError:
            pass
    else:
        path = kubeconfig or None
        k8s_config.load_kube_config(
            config_file=path, context=context or None, client_configuration=cfg
        )
        _, active = k8s_config.list_kube_config_contexts(config_file=path)
        if context:
            contexts, _ = k8s_config.list_kube_config_contexts(config_file=path)
            active = next((c for c in contexts if c["name"] == context), active)
        namespace = (active or {}).get("context", {}).get("namespace", "")
    return k8s_client.CoreV1Api(k8s_client.ApiClient(cfg)), namespace
