"""A kernel's statuses as Jupyter clients expect them, by jupyter_server's rules for its own
kernels (pure; the bridge applies them to every iopub message).

* The kernel model's ``execution_state`` follows the ``status`` messages that answer what
  users do (execute, complete, ...); those answering the requests listed in
  :data:`UNTRACKED` (kernel_info, shutdown, interrupt, ...: a gateway's readiness probe, a
  notebook's reconnect) leave it alone, except that they end ``starting`` (jupyter_server's
  activity watcher: a busy kernel is not shown idle because someone asked it for its info).
* A kernel's own start-up ``starting`` during a restart is not shown: the gateway announces
  the restart's ``starting`` itself, once, since a subscriber that reconnects to the new
  kernel may or may not catch the kernel's own (it is published as the kernel starts).
* ``iopub_welcome`` (JEP 65: the kernel greeting a new iopub subscription) greets the
  gateway's own subscription, not any client's. A kernel greets only the first subscriber
  to reach it, so jupyter_server's clients see it now and then, after a restart, when their
  socket came first; raygate's one subscriber always comes first.
"""

from __future__ import annotations

UNTRACKED = frozenset(
    {
        # jupyter_server's ``MappingKernelManager.untracked_message_types`` default, which
        # JupyterLab also gets in its page config and applies to the statuses it shows.
        "comm_info_request",
        "comm_info_reply",
        "kernel_info_request",
        "kernel_info_reply",
        "shutdown_request",
        "shutdown_reply",
        "interrupt_request",
        "interrupt_reply",
        "debug_request",
        "debug_reply",
        "stream",
        "display_data",
        "update_display_data",
        "execute_input",
        "execute_result",
        "error",
        "status",
        "clear_output",
        "debug_event",
        "input_request",
        "input_reply",
    }
)


def next_execution_state(current: str, state: str, parent_type: str) -> str:
    """The kernel model's ``execution_state`` after an iopub ``status`` of ``state`` whose
    parent request is of type ``parent_type`` ("" for none, as the kernel's own
    ``starting``). Called by the bridge for each status message it receives."""
    if parent_type not in UNTRACKED:
        return state
    if current == "starting" and state != "starting":
        return "idle"
    return current


def shown_to_clients(msg_type: str, state: str, parent_type: str, restarting: bool) -> bool:
    """Whether an iopub message of the kernel goes to the clients: not the kernel's
    greeting of the gateway's subscription, nor, while the gateway restarts the kernel
    (``restarting``; it announces ``starting`` itself), the new kernel's own ``starting``.
    ``state``: the execution_state of a ``status`` message ("" for other messages)."""
    if msg_type == "iopub_welcome":
        return False
    return not (restarting and msg_type == "status" and state == "starting" and not parent_type)
