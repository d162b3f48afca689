"""The ``--prewarm`` syntax (``python3=2,py-gpu=1``), owned by the warm pool (:mod:`.pool`);
pure, so the gateway's settings can parse it without importing the pool."""

from __future__ import annotations


def parse_prewarm(text: str) -> dict[str, int]:
    """``python3=2,py-gpu=1`` as ``{"python3": 2, "py-gpu": 1}``; raises ValueError."""
    sizes: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, count = item.rpartition("=")
        name = name.strip()
        try:
            size = int(count)
        except ValueError:
            size = -1
        if not sep or not name or size < 1:
            raise ValueError(
                f"expected KERNELSPEC=N with N a positive number of kernels, not {item!r}"
            )
        if name in sizes:
            raise ValueError(f"kernelspec {name!r} is named twice")
        sizes[name] = size
    return sizes
