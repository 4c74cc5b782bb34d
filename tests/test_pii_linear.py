"""PII masking stays linear on crafted input, runs off the event loop when large, and a crafted prompt
cannot freeze a proxy replica (the "PII probe")."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
import uuid

import httpx
import pytest

from gatekeeping.pii import find, mask_text
from gatekeeping.admission import MASK_INLINE_CHARS, _mask
from tests.conftest import Stack
from tests.test_gatekeeping import CHAT, chat, new_tenant

_D = "0123456789"


def _digits(r: random.Random, lo: int, hi: int) -> str:
    return "".join(r.choice(_D) for _ in range(r.randint(lo, hi)))


# One family of chunks per pattern, each aimed at where that pattern could backtrack or rescan.
FAMILIES = {
    "intl_phone_long_run": lambda r: "+1" + _digits(r, 40, 40) + " ",
    "intl_phone_groups": lambda r: "+" + "".join(r.choice(" .-") + _digits(r, 1, 6) for _ in range(r.randint(5, 12)))
    + r.choice(" -."),
    "intl_phone_parens": lambda r: "+" + _digits(r, 1, 4)
    + "".join(r.choice(["(0)", "(12)", " (415)", "-"]) + _digits(r, 0, 3) for _ in range(8)),
    "plus_runs": lambda r: "+1" * r.randint(1, 30) + " ",
    "digit_sep_runs": lambda r: "".join(_digits(r, 1, 4) + r.choice(" -.") for _ in range(r.randint(3, 12))),
    "kr_phone": lambda r: r.choice(["010", "02", "(02)", "1588", "031"]) + r.choice(" -.") + _digits(r, 3, 4)
    + r.choice(" -.") + _digits(r, 3, 5),
    "na_phone": lambda r: r.choice(["(415) ", "415-"]) + _digits(r, 3, 3) + "-" + _digits(r, 3, 6),
    "card_like": lambda r: r.choice("34569") + "".join(r.choice(["", " ", "-"]) + _digits(r, 1, 5) for _ in range(6)),
    "rrn_like": lambda r: _digits(r, 6, 6) + r.choice(["-", " - ", ""]) + _digits(r, 6, 8),
    "ipv4_like": lambda r: ".".join(_digits(r, 1, 4) for _ in range(r.randint(3, 9))),
    "ipv6_like": lambda r: ":".join(r.choice(["", "db8", "1", "ffff", "::"]) for _ in range(r.randint(3, 20))),
    "email_local": lambda r: "a." * r.randint(1, 40) + "@",
    "email_domain": lambda r: "x@" + "".join(r.choice(["a.", "a-", "ab", "-.", "."]) for _ in range(r.randint(5, 80))),
    "email_at_runs": lambda r: "a@" * r.randint(1, 40),
    "secret_tokens": lambda r: r.choice(["sk-", "sk_live_", "ghp_", "xoxb-", "AKIA", "hf_", "glpat-", "npm_", "AIza"])
    + "a-" * r.randint(1, 60),
    "jwt_chain": lambda r: "eyJ" + "a" * r.randint(1, 12) + ".",
    "bearer": lambda r: r.choice(["Bearer", "bearer"]) + r.choice([" ", "\t"]) * r.randint(1, 30) + r.choice(["", "x."]),
    "pem_without_end": lambda r: "-----BEGIN " + "A " * r.randint(0, 3) + "PRIVATE KEY-----" + r.choice(["", "\n"]),
    "mixed": lambda r: r.choice(["+82 10 1234 5678 ", "a@b.cc ", "4111 1111 1111 1111 ", "10.0.0.1 ", "::1 "]),
}


def adversarial(family: str, size: int, seed: int = 0) -> str:
    rng = random.Random(f"{family}-{seed}")
    parts, n = [], 0
    while n < size:
        parts.append(FAMILIES[family](rng))
        n += len(parts[-1])
    return "".join(parts)[:size]


def _best_time(text: str, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        mask_text(text)
        best = min(best, time.perf_counter() - t)
        if best > 1.0:
            break
    return best


@pytest.mark.parametrize("family", FAMILIES)
def test_masking_time_grows_linearly(family: str) -> None:
    small = _best_time(adversarial(family, 40_000))
    assert small < 1.0, f"{family}: 40 kB took {small:.2f} s"          # ~5-50 ms here
    big = _best_time(adversarial(family, 160_000))
    assert big < 8 * small + 0.05, f"{family}: 4x the input took {big / small:.1f}x the time"


@pytest.mark.parametrize("seed", range(3))
def test_findings_on_crafted_input_are_ordered_and_disjoint(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(adversarial(rng.choice(list(FAMILIES)), rng.randint(10, 300), seed=i) + rng.choice(" \n,")
                   for i in range(300))
    spans = [(f.start, f.end) for f in find(text)]
    assert spans and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_crafted_phone_run_is_not_a_phone_and_real_ones_still_are() -> None:
    crafted = ("+1" + "5" * 40 + " ") * 3
    assert mask_text(crafted) == (crafted, {})
    assert mask_text("+82 10 1234 5678 2024 11 05-12")[0] == "[PHONE_1] 2024 11 05-12"


def test_a_1mb_prompt_is_masked_off_the_event_loop() -> None:
    text = adversarial("ipv6_like", 1_000_000) + " call +82 10 1234 5678"
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    assert len(text) > MASK_INLINE_CHARS

    async def main() -> tuple[float, float, dict]:
        gaps: list[float] = []
        done = False

        async def heartbeat() -> None:
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.01)
        t = time.perf_counter()
        masked, counts = await _mask(body, "mask")
        elapsed = time.perf_counter() - t
        done = True
        await beat
        assert masked["messages"][0]["content"].endswith("call [PHONE_1]") and counts["PHONE"] == 1
        return elapsed, max(gaps), counts

    elapsed, worst_gap, _ = asyncio.run(main())
    # Inline, the loop would stall for the whole masking (~1 s here); in a thread it keeps turning.
    assert worst_gap < elapsed / 4, f"loop stalled {worst_gap:.3f} s of {elapsed:.3f} s"


def test_pii_probe_crafted_prompt_does_not_freeze_the_proxy(stack: Stack) -> None:
    _, masked_key = new_tenant(stack, pii="mask")
    _, other_key = new_tenant(stack)
    assert chat(stack.proxy_url, other_key).status_code == 200   # warm: a fresh stack's first chat takes ~3 s
    unit = "+1" + "1" * 40 + " "
    content = f"scenario=ok;nonce={uuid.uuid4().hex}; " + unit * (40_000 // len(unit)) + "call +82 10 1234 5678"

    def crafted() -> httpx.Response:
        return httpx.post(stack.proxy_url + CHAT, headers={"authorization": f"Bearer {masked_key}"}, timeout=120,
                          json={"model": "fake-vllm", "messages": [{"role": "user", "content": content}]})

    def timed(call) -> tuple[httpx.Response, float]:
        t = time.monotonic()
        r = call()
        return r, time.monotonic() - t

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        probes = [pool.submit(crafted) for _ in range(2)]
        time.sleep(0.3)   # both are being admitted (before the fix: ~8 s of masking each, on the loop)
        for _ in range(3):
            health, took = timed(lambda: httpx.get(stack.proxy_url + "/healthz", timeout=30))
            assert health.status_code == 200 and took < 1.0, f"/healthz took {took:.2f} s"
            other, took = timed(lambda: chat(stack.proxy_url, other_key))
            assert other.status_code == 200 and took < 1.0, f"another tenant's chat took {took:.2f} s"
        assert [p.result().status_code for p in probes] == [200, 200]
    seen = [t for t in stack.fake.seen if unit in t]
    assert seen and all("call [PHONE_1]" in t and "+82 10 1234 5678" not in t for t in seen)
