"""Waiting in tests: retry a check until it holds, in place of hand-rolled poll loops and sleeps.

A check is a callable that returns something truthy once the condition holds; it may also assert.
Its AssertionErrors and falsy results are retried until `timeout`; any other exception ends the wait
at once (raise one for "this will never happen", e.g. a server process that exited)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 30, interval: float = 0.1, what: str | None = None) -> T:
    """Calls `check` every `interval` seconds until it returns something truthy, and returns that.
    After `timeout` seconds raises the check's last AssertionError (with a note saying so), or an
    AssertionError naming `what` (default: the check's name) and its last result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
            error = None
        except AssertionError as e:
            value, error = None, e
        if time.monotonic() >= deadline:
            raise _gave_up(check, timeout, what, value, error)
        time.sleep(interval)


async def eventually_async(check: Callable[[], T | Awaitable[T]], timeout: float = 30, interval: float = 0.1,
                           what: str | None = None) -> T:
    """`eventually` inside the event loop: `check` may be a plain or a coroutine function, and the
    waits between tries are asyncio sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            error = None
        except AssertionError as e:
            value, error = None, e
        if time.monotonic() >= deadline:
            raise _gave_up(check, timeout, what, value, error)
        await asyncio.sleep(interval)


def _gave_up(check: Callable, timeout: float, what: str | None, value: Any,
             error: AssertionError | None) -> AssertionError:
    what = what or getattr(check, "__name__", repr(check))
    if error is not None:
        error.add_note(f"eventually(): {what} still failed after {timeout} s")
        return error
    return AssertionError(f"eventually(): {what} still returned {value!r} after {timeout} s")
