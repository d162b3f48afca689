"""Kernels as Kubernetes pods.

Each kernel is one pod made from a pod template (``--k8s-pod-template``, default the
``k8s/kernel-pod.yaml`` shipped with raygate; a kernelspec may name its own in
``metadata.raygate.kubernetes.pod_template``). The pod's kernel container (the one named
``kernel``, else the first) runs ``python -m raygate.launchers.kernelside.bootstrap``, which starts
the kernel in the pod and reports to the gateway's report listener; from then on the
gateway talks to the bootstrap's control endpoint at the pod's IP, as with SSH and Dask.

What raygate puts into the template, per kernel:

* name ``raygate-kernel-<kernel id>``, namespace ``KERNEL_NAMESPACE`` (when
  ``--k8s-kernel-namespaces`` allows it) or ``--k8s-namespace`` (default: the kubeconfig
  context's, or the gateway pod's own namespace);
* labels ``app.kubernetes.io/managed-by=raygate``, ``raygate.io/kernel-id``,
  ``raygate.io/kernelspec`` (and ``raygate.io/username``);
* image: ``KERNEL_IMAGE``, else the kernelspec's ``metadata.raygate.kubernetes.image``,
  else ``--k8s-kernel-image``, else the template's;
* ``KERNEL_SERVICE_ACCOUNT_NAME`` → ``serviceAccountName``; ``KERNEL_UID``/``KERNEL_GID`` →
  ``securityContext.runAsUser``/``runAsGroup`` (never root); ``KERNEL_WORKING_DIR`` →
  ``workingDir``; ``KERNEL_VOLUMES``/``KERNEL_VOLUME_MOUNTS`` (JSON lists) are added to the
  template's volumes and the kernel container's mounts; each of these, and the image, only
  within the operator's allow lists (:mod:`.policy`; by default what the template and the
  kernelspec configure, and ``emptyDir`` volumes), else the start is a 400;
* the resource request: CPUs and memory → ``resources.requests`` (their ``_LIMIT``s →
  ``resources.limits``), GPUs → ``nvidia.com/gpu`` (whole GPUs, request = limit), custom
  resources → extended resources of that name, node labels → ``nodeSelector``,
  ``node:<name>`` → ``kubernetes.io/hostname``;
* the bootstrap's settings in ``RAYGATE_BOOTSTRAP_SETTINGS``, the pod IP (downward API) in
  ``RAYGATE_ADVERTISE_ADDRESS`` and the kernel's secret from a per-kernel Secret (same
  name as the pod, owned by it) through ``secretKeyRef``: never in the pod spec itself.

Starting fails promptly, with Kubernetes' own words, when the scheduler marks the pod
``Unschedulable`` (400 when preemption cannot help, i.e. no node could ever hold it; else
503; ``--k8s-unschedulable-wait`` gives an autoscaler that long first) or the kubelet
cannot pull or create the container (``ErrImagePull``, ``ImagePullBackOff``,
``InvalidImageName``, ``CreateContainerConfigError``, ...: 500).

Kernels are found again from the cluster alone: the kernel's Secret also holds its
reattach record (connection info, control port), so a restarted gateway, or another
replica, lists the labelled pods and serves them; no local state is needed.

Orphans are cleaned up at startup and then every ``--k8s-scan-interval`` seconds (the
same scan that adopts other replicas' kernels): a labelled pod that no gateway serves is
deleted when it has ended (``Succeeded``/``Failed``), when its bootstrap no longer answers,
or when it never got a record and is older than the longest launch timeout; a kernel
Secret whose pod is gone is deleted likewise.

The gateway needs, in each kernel namespace: pods (create, get, list, delete), pods/log
(get) and secrets (create, get, list, patch, delete).

Modules: :mod:`.launcher` (:class:`KubernetesLauncher`, :class:`PodKernel`), :mod:`.pod`
(pure: the pod from the template and the request, and what a pod's status says is
wrong), :mod:`.policy` (pure: what a request may choose about its pod), :mod:`.records`
(the kernel's Secret), :mod:`.scan` (finding kernels again, deleting orphans),
:mod:`.client` (the API client, imported only when a cluster is configured: it costs
seconds to import).
"""

from .launcher import KubernetesLauncher, PodKernel

__all__ = ["KubernetesLauncher", "PodKernel"]
