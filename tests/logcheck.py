"""Tracebacks in a test server's log fail the test that ran it.

A gateway (or stand-in, or notebook server) that logs a traceback or an unhandled thread
exception and still answers is broken in a way no HTTP assertion sees: a background thread
died, a task's error was dropped. ``ServerProcess.stop`` and the other servers' ``stop``
call ``assert_clean_log``; a test that provokes an error on purpose declares the patterns
it expects (``expect_errors=``), and ``ALLOWED`` below lists, with the reason, the few that
every server may log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# What starts a problem report in a Python process's output.
_STARTS = re.compile(
    r"Traceback \(most recent call last\)"
    r"|^Exception in thread "  # threading.excepthook
    r"|^Exception ignored in"  # sys.unraisablehook
    r"|Task exception was never retrieved"  # asyncio
    r"|^Exception in callback ",  # asyncio
    re.MULTILINE,
)
_CHAINED = ("During handling of the above exception", "The above exception was the direct")

# Problems any server may log. Keep this short; each entry says why it is not a bug.
ALLOWED: tuple[str, ...] = (
    # A kernel refusing a message not signed with its key, as it must; a gateway shows it in
    # the stderr tail of a kernel that died. On this machine's shared loopback hosts a
    # kernel's port may have been another kernel's a moment before, and a ZMQ peer of that
    # one (another test's client, with a request queued) reaches the new kernel first (CI
    # run 31: two such messages, in a kernel of test_ssh.py's that a test then killed).
    r"in shell_channel_thread_main\n(?:.*\n)*?ValueError: Invalid Signature",
)

# Bugs known and owned elsewhere, marked one by one until their fix lands (then delete the
# entry). Not an allow-list: each names exactly one failure.
KNOWN_BUGS: tuple[str, ...] = ()


def problems(text: str) -> list[str]:
    """Each traceback or unhandled-exception report in ``text``, as one block of lines."""
    lines = text.splitlines()
    blocks: list[str] = []
    i = 0
    while i < len(lines):
        if not _STARTS.search(lines[i]):
            i += 1
            continue
        start = i
        i += 1
        # The report goes on while lines are indented (frames, code, carets), chain
        # headers, blank, or another traceback header; its first other line is the
        # exception itself, and a chained exception continues the block.
        while i < len(lines):
            line = lines[i]
            if not line.strip() or line[0] in " \t" or line.startswith("Traceback ("):
                i += 1
                continue
            if line.startswith(_CHAINED):
                i += 1
                continue
            i += 1  # the exception line
            nxt = next((ln for ln in lines[i : i + 3] if ln.strip()), "")
            if not nxt.startswith(_CHAINED):
                break
        blocks.append("\n".join(lines[start:i]))
    return blocks


def unexpected(text: str, expect: Iterable[str] = ()) -> list[str]:
    """The problem blocks in ``text`` that no pattern of ``expect``, ``ALLOWED`` or
    ``KNOWN_BUGS`` matches (``re.search`` on the whole block)."""
    patterns = [*expect, *ALLOWED, *KNOWN_BUGS]
    return [b for b in problems(text) if not any(re.search(p, b) for p in patterns)]


def assert_clean_log(what: str, text: str, expect: Iterable[str] = ()) -> None:
    """Fail with the unexpected problem blocks of ``what``'s log, if any."""
    found = unexpected(text, expect)
    if found:
        shown = "\n\n".join(found[:5])
        raise AssertionError(
            f"{what} logged {len(found)} unexpected traceback(s) or unhandled exception(s)"
            f" (tests/logcheck.py):\n{shown}"
        )
