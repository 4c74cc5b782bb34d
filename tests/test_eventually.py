"""tests/eventually.py: what a wait returns, retries and raises."""

from __future__ import annotations

import pytest

from tests.eventually import eventually, eventually_async


class Countdown:
    """Fails (by asserting, or by returning `falsy`) until its `n`th call, then returns "ready"."""

    def __init__(self, n: int, falsy: object = None, asserting: bool = False):
        self.n, self.falsy, self.asserting, self.calls = n, falsy, asserting, 0

    def __call__(self):
        self.calls += 1
        if self.calls < self.n:
            assert not self.asserting, f"call {self.calls} of {self.n}"
            return self.falsy
        return "ready"


@pytest.mark.parametrize("asserting", [False, True])
def test_returns_the_first_truthy_value_after_retrying(asserting: bool):
    check = Countdown(4, falsy=[], asserting=asserting)
    assert eventually(check, timeout=30, interval=0) == "ready"
    assert check.calls == 4


def test_raises_the_last_assertion_with_a_note():
    check = Countdown(10**9, asserting=True)
    with pytest.raises(AssertionError, match=r"call \d+ of") as caught:
        eventually(check, timeout=0.05, interval=0.01, what="the countdown")
    assert check.calls > 1
    assert caught.value.__notes__ == ["eventually(): the countdown still failed after 0.05 s"]


def test_a_falsy_result_names_the_check_and_its_value():
    def job_status():
        return ""

    with pytest.raises(AssertionError, match=r"job_status still returned '' after 0.02 s"):
        eventually(job_status, timeout=0.02, interval=0.01)


def test_other_exceptions_end_the_wait_at_once():
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("the server exited")

    with pytest.raises(RuntimeError, match="the server exited"):
        eventually(broken, timeout=30)
    assert calls == [1]


async def test_the_async_variant_awaits_coroutine_checks():
    check = Countdown(3, asserting=True)

    async def coroutine_check():
        return check()

    assert await eventually_async(coroutine_check, timeout=30, interval=0) == "ready"
    assert check.calls == 3
    plain = Countdown(2)
    assert await eventually_async(plain, timeout=30, interval=0) == "ready" and plain.calls == 2


async def test_the_async_variant_gives_up_like_the_plain_one():
    async def never():
        return 0

    with pytest.raises(AssertionError, match="never still returned 0"):
        await eventually_async(never, timeout=0.02, interval=0.01)
