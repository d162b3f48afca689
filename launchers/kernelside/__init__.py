"""What runs next to a kernel, wherever it runs: the kernel supervisor and its parts.

The local launcher (in the gateway), the Ray kernel actor (:mod:`raygate.actors.kernel`)
and the remote bootstrap (:mod:`.bootstrap`, on SSH hosts, Dask workers, pods, YARN
containers) all start their kernel through :class:`.supervisor.KernelSupervisor`.

* :mod:`.supervisor`: one kernel process: files, env, argv, spawn, restart, stop, exit;
* :mod:`.env`: the one composition of a kernel's environment;
* :mod:`.account`: the OS account a kernel may run as;
* :mod:`.process`: the process primitives (spawn, signal, terminate, argv, connection file);
* :mod:`.keeper`: the kernel's recent output, kept for a gateway restarted after a crash;
* :mod:`.bootstrap`: ``python -m raygate.launchers.kernelside.bootstrap``.

Nothing here imports the gateway (:mod:`raygate` beyond :mod:`raygate.launchers.wire`).
"""
