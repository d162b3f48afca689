"""The log check that fails a test whose server logged a traceback (tests/logcheck.py)."""

from __future__ import annotations

import pytest

from logcheck import assert_clean_log, problems, unexpected

THREAD = """INFO: started
Exception in thread worker (run):
Traceback (most recent call last):
  File "/x.py", line 3, in run
    boom()
ValueError: boom
INFO: still serving
"""

CHAINED = """Traceback (most recent call last):
  File "/a.py", line 1, in f
KeyError: 'k'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/a.py", line 3, in f
RuntimeError: wrapped
INFO: next
"""


def test_a_thread_exception_is_one_block_ending_at_its_exception() -> None:
    assert problems(THREAD) == ["\n".join(THREAD.splitlines()[1:6])]


def test_a_chained_traceback_is_one_block() -> None:
    (block,) = problems(CHAINED)
    assert block.endswith("RuntimeError: wrapped") and "KeyError" in block


def test_asyncio_and_unraisable_reports_count() -> None:
    text = "Task exception was never retrieved\nfuture: <Task>\nException ignored in: <x>\n"
    assert len(problems(text)) == 2


def test_clean_log_passes_and_expected_errors_are_declared() -> None:
    assert_clean_log("srv", "INFO: fine\nERROR: a plain line is not a traceback\n")
    assert unexpected(THREAD, expect=[r"ValueError: boom"]) == []
    with pytest.raises(AssertionError, match="ValueError: boom"):
        assert_clean_log("srv", THREAD)


KERNEL_REFUSES = """WARNING raygate.registry: kernel k died: exited with code 1: ...
[IPKernelApp] ERROR | Invalid message
Traceback (most recent call last):
  File "/site-packages/ipykernel/kernelbase.py", line 609, in shell_channel_thread_main
    msg3 = self.session.deserialize(msg2, content=False, copy=False)
  File "/site-packages/jupyter_client/session.py", line 1078, in deserialize
    raise ValueError(msg)
ValueError: Invalid Signature: b'5fa0'
"""


def test_a_kernel_refusing_a_badly_signed_message_is_allowed_and_nothing_else() -> None:
    assert unexpected(KERNEL_REFUSES) == []
    elsewhere = KERNEL_REFUSES.replace("in shell_channel_thread_main", "in verify")
    assert len(unexpected(elsewhere)) == 1
