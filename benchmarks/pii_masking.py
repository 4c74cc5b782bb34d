"""How long PII masking takes on a 100 kB prompt (mixed English/Korean text, a few hundred PII items
and as many near-misses: dates, versions, amounts, ids).

    .venv/bin/python benchmarks/pii_masking.py            # writes benchmarks/results/pii_masking.json
    .venv/bin/python benchmarks/pii_masking.py --size 200000 --runs 50

Reports the time of `gatekeeping.pii.apply_policy(messages, "mask")` (p50/p90/max over runs, after a
warm-up), and how many of the planted items were found. Compare with the model's TTFT (tens of ms).
`crafted_40kb_ms` times 40 kB of `+1` + 40 digits + space, a run that once cost 200 us per character.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gatekeeping.pii import apply_policy, luhn_ok  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pii_masking.json"

FILLER = [
    "The quarterly report was published on 2024-03-15 and revised on 2024.04.01 after review.",
    "배송은 영업일 기준 3~5일이 소요되며, 주문 금액 1,250,000원 이상은 무료입니다.",
    "Upgrade to version 10.2.3 before running the migration; build 20240115 is deprecated.",
    "회의는 오후 2시 30분(14:30)에 3층 대회의실에서 진행됩니다. 참석 인원은 12명입니다.",
    "Invoice INV-2024-000123 covers 48 units at 19.99 each, shipped in 3 boxes.",
    "고객님의 문의 사항을 확인하였으며, 담당자가 곧 연락드릴 예정입니다.",
    "Please summarise the following thread and list the action items for each participant.",
    "The model should answer in Korean, keep a polite tone, and avoid speculation.",
    "Ticket #48213 was escalated at 09:15:00 and resolved within the SLA of 4 hours.",
    "서버 점검은 매주 화요일 새벽 2시부터 4시까지 예정되어 있습니다.",
]


def _card(rng: random.Random) -> str:
    while True:
        digits = "4" + "".join(rng.choice("0123456789") for _ in range(15))
        if luhn_ok(digits):
            return " ".join(digits[i:i + 4] for i in range(0, 16, 4))


def _rrn(rng: random.Random) -> str:
    w = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
    base = f"{rng.randint(60, 99):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.choice('12')}" \
           + "".join(rng.choice("0123456789") for _ in range(5))
    check = (11 - sum(a * int(b) for a, b in zip(w, base)) % 11) % 10
    return f"{base[:6]}-{base[6:]}{check}"


def _item(rng: random.Random, i: int) -> str:
    kind = i % 8
    if kind == 0:
        return f"user{i}.{rng.randint(1, 999)}@example{rng.randint(1, 50)}.co.kr"
    if kind == 1:
        return f"010-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
    if kind == 2:
        return f"+82 10 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}"
    if kind == 3:
        return _card(rng)
    if kind == 4:
        return _rrn(rng)
    if kind == 5:
        return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind == 6:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        return "sk-proj-" + "".join(rng.choice(alphabet) for _ in range(40))
    return f"02-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"


def build_prompt(size: int = 100_000, seed: int = 1) -> tuple[str, int]:
    """About `size` characters of text with one PII item per ~3 sentences; returns (text, items)."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = planted = 0
    while length < size:
        sentence = rng.choice(FILLER)
        if rng.random() < 0.36:
            sentence += f" 연락처: {_item(rng, planted)} 입니다."
            planted += 1
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts), planted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    text, planted = build_prompt(args.size)
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": text}]
    apply_policy(messages, "mask")  # warm-up
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        result = apply_policy(messages, "mask")
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    crafted = ("+1" + "1" * 40 + " ") * (40_000 // 43)
    t = time.perf_counter()
    apply_policy([{"role": "user", "content": crafted}], "mask")
    crafted_ms = (time.perf_counter() - t) * 1000
    out = {
        "benchmark": "pii_masking",
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "prompt_chars": len(text),
        "prompt_bytes_utf8": len(text.encode()),
        "planted_items": planted,
        "found_items": result.total,
        "found_by_kind": result.counts,
        "runs": args.runs,
        "ms": {"p50": round(statistics.median(times), 3),
               "p90": round(times[int(0.9 * (len(times) - 1))], 3),
               "min": round(times[0], 3), "max": round(times[-1], 3)},
        "crafted_40kb_ms": round(crafted_ms, 3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
