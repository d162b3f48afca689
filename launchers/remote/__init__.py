"""The gateway side of launchers whose kernels a bootstrap starts elsewhere.

* :mod:`.base`: :class:`RemoteKernel`, :class:`RemoteLauncher` and the settings every
  remote launcher inherits (:class:`RemoteSettings`);
* :mod:`.state`: the reattach records a restarted gateway reads;
* :mod:`.listener`: the report listener every bootstrap reports to;
* :mod:`.resources`: the resource request in the forms remote environments use.
"""

from .base import (
    DEAD_AFTER_FAILED_CHECKS,
    PENDING,
    RemoteKernel,
    RemoteLauncher,
    RemoteSettings,
)
from .listener import ReportListener
from .resources import (
    _resource_request,
    describe_resources,
    placement_constraints,
    requested_resources,
)
from .state import StateStore, default_state_dir

__all__ = [
    "DEAD_AFTER_FAILED_CHECKS",
    "PENDING",
    "RemoteKernel",
    "RemoteLauncher",
    "RemoteSettings",
    "ReportListener",
    "StateStore",
    "_resource_request",
    "default_state_dir",
    "describe_resources",
    "placement_constraints",
    "requested_resources",
]
