"""Kernels as YARN services (the ResourceManager's YARN Services API): :mod:`.launcher`
(the launcher), :mod:`.spec` (the service definition and the answers it reads, pure),
:mod:`.client` (REST calls with simple auth or SPNEGO)."""

from .client import RMError
from .launcher import YarnKernel, YarnLauncher, YarnSettings
from .spec import ContainerSize, container_size, service_name

__all__ = [
    "ContainerSize",
    "RMError",
    "YarnKernel",
    "YarnLauncher",
    "YarnSettings",
    "container_size",
    "service_name",
]
