"""Verifier `HeldOutCases`: the held-out chats through the candidate (and the base), scored by a
declared metric; the candidate passes only at or over the threshold and no worse than the base."""

from __future__ import annotations

import msgspec

from orchestration.training.protocols import Example, Generate
from schemas.fine_tuning import VerificationSpec, VerifyReport


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def score(metric: str, expected: str, got: str) -> bool:
    if metric == "exact":
        return _normal(got) == _normal(expected)
    if metric == "contains":
        return _normal(expected) in _normal(got)
    if metric == "json_valid":
        try:
            msgspec.json.decode(got.strip())
        except msgspec.DecodeError:
            return False
        return True
    raise ValueError(f"unknown metric {metric!r}")


async def pass_rate(cases: list[Example], generate: Generate, spec: VerificationSpec) -> float:
    passed = 0
    for case in cases:
        got = await generate(case.prompt, spec.max_tokens)
        passed += score(spec.metric, case.answer, got)
    return passed / len(cases)


class HeldOutCases:
    async def verify(self, cases: list[Example], candidate: Generate, base: Generate | None,
                     spec: VerificationSpec) -> VerifyReport:
        if not cases:
            return VerifyReport(passed=True, cases=0, candidate_score=1.0, base_score=None,
                                reason="no held-out cases: nothing to verify")
        got = await pass_rate(cases, candidate, spec)
        base_score = await pass_rate(cases, base, spec) if base is not None and spec.compare_to_base else None
        reason = ""
        if got < spec.threshold:
            reason = f"{spec.metric} pass rate {got:.2f} is under the threshold {spec.threshold:.2f}"
        elif base_score is not None and got < base_score:
            reason = f"{spec.metric} pass rate {got:.2f} is under the base model's {base_score:.2f}"
        return VerifyReport(passed=not reason, cases=len(cases), candidate_score=got,
                            base_score=base_score, reason=reason)
