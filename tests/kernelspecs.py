"""Kernelspecs made for tests: real kernels started in unusual ways."""

from __future__ import annotations

import json
import os
import sys


def write_kernelspec(root: str, name: str, argv: list[str], **extra: object) -> str:
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    spec = {"argv": argv, "display_name": name, "language": "python", **extra}
    with open(os.path.join(path, "kernel.json"), "w") as f:
        json.dump(spec, f)
    return path


def ipykernel_argv() -> list[str]:
    return [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def make_test_kernelspecs(root: str) -> str:
    """A directory of kernelspecs: one that crashes, one interrupted by message."""
    write_kernelspec(
        root,
        "broken",
        [
            sys.executable,
            "-c",
            "import sys; sys.stderr.write('boom: no such module foo'); sys.exit(3)",
        ],
    )
    write_kernelspec(root, "by-message", ipykernel_argv(), interrupt_mode="message")
    write_kernelspec(root, "python3", ipykernel_argv())
    write_kernelspec(root, "silent", [sys.executable, "-c", "import time; time.sleep(600)"])
    # starts an ipykernel unless the file "no-more-starts" exists beside the kernelspecs
    marker = os.path.join(root, "no-more-starts")
    write_kernelspec(
        root,
        "fragile",
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            f"if os.path.exists({marker!r}): sys.exit('refusing to start again')\n"
            "os.execv(sys.executable, [sys.executable, '-m', 'ipykernel_launcher', '-f', sys.argv[1]])",
            "{connection_file}",
        ],
    )
    # The first start finds one of its ports taken (a process of this script holds it, as
    # any other process could between the gateway choosing the port and the kernel binding
    # it); later starts are plain ipykernels. Shell: ipykernel exits; iopub: it hangs,
    # serving nothing (its threads hold the process up).
    for name, channel in (("port-taken", "shell"), ("iopub-taken", "iopub")):
        taken_once = os.path.join(root, f"{name}-once")
        write_kernelspec(
            root,
            name,
            [
                sys.executable,
                "-c",
                "import json, os, socket, sys\n"
                f"if not os.path.exists({taken_once!r}):\n"
                f"    open({taken_once!r}, 'w').close()\n"
                "    info = json.load(open(sys.argv[1]))\n"
                "    holder = socket.socket()\n"
                f"    holder.bind((info['ip'], info['{channel}_port']))\n"
                "    holder.listen()\n"
                "    os.set_inheritable(holder.fileno(), True)\n"
                "    os.execv(sys.executable, [sys.executable, '-m', 'ipykernel_launcher', '-f', sys.argv[1]])\n"
                "os.execv(sys.executable, [sys.executable, '-m', 'ipykernel_launcher', '-f', sys.argv[1]])",
                "{connection_file}",
            ],
        )
    # ipykernel 7 can leave a shell request unread until another message arrives on the
    # shell socket (ipython/ipykernel#1554: a reply sent from another thread consumed the
    # socket's wake-up). This ipykernel does so, every time, with its first execute_request.
    write_kernelspec(
        root,
        "unread-shell",
        [sys.executable, "-c", UNREAD_SHELL_KERNEL, "-f", "{connection_file}"],
    )
    return root


UNREAD_SHELL_KERNEL = """
from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp


class UnreadShellKernel(IPythonKernel):
    held = None
    first_seen = False

    async def shell_main(self, subshell_id, msg):
        _, frames = self.session.feed_identities(msg, copy=False)
        header = self.session.deserialize(frames, content=False, copy=False)["header"]
        if header["msg_type"] == "execute_request" and not self.first_seen:
            self.first_seen = True
            self.held = (subshell_id, msg)  # unread until the next shell message
            return
        if self.held is not None:
            held, self.held = self.held, None
            await super().shell_main(*held)
        await super().shell_main(subshell_id, msg)


IPKernelApp.launch_instance(kernel_class=UnreadShellKernel)
"""
