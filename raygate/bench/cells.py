"""The code the benchmarks run in kernels, and the text they expect back."""

from __future__ import annotations

from typing import Any

TRIVIAL = "pass"
"""The cell a round trip executes: no output, nothing for the kernel to do."""

SLEEP = "import time; time.sleep(60)"
"""The cell an interrupt stops."""

# Run here to know what to expect and in the kernel to print it: 100-byte lines, numbered,
# with quotes and backslashes so the JSON framing has something to escape.
MAKE_TEXT = r"""
def _rg_make_text(nbytes):
    filler = '"raygate" \\ bridge benchmark ' * 8
    lines = [f"{i:010d} {filler[i % 64:i % 64 + 88]}\n" for i in range(nbytes // 100)]
    return "".join(lines) + "x" * (nbytes % 100)
"""


def make_text(nbytes: int) -> str:
    """The text the print cell prints, built here exactly as in the kernel."""
    scope: dict[str, Any] = {}
    exec(MAKE_TEXT, scope)
    return scope["_rg_make_text"](nbytes)


def setup_cell(nbytes: int) -> str:
    """Builds ``_rg_text`` in the kernel, so the timed cell only prints."""
    return MAKE_TEXT + f"\n_rg_text = _rg_make_text({nbytes})\n"


def print_cell(chunk: int) -> str:
    """The timed cell: print ``_rg_text``, whole or in flushed pieces of ``chunk`` bytes."""
    if chunk <= 0:
        return "print(_rg_text, end='')"
    return (
        "import sys as _rg_sys\n"
        f"for _rg_i in range(0, len(_rg_text), {chunk}):\n"
        f"    _rg_sys.stdout.write(_rg_text[_rg_i:_rg_i + {chunk}])\n"
        "    _rg_sys.stdout.flush()\n"
    )


def flood_cell(lines: int) -> str:
    """Many small outputs, as a progress bar makes them: one flushed line at a time."""
    return f"for _rg_i in range({lines}): print(_rg_i, flush=True)"


def flood_text(lines: int) -> str:
    """What :func:`flood_cell` prints."""
    return "".join(f"{i}\n" for i in range(lines))
