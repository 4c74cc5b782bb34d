"""PII detection and masking for chat prompts. Pure functions: no I/O, no logging, no global state.

Kinds and placeholders: EMAIL, PHONE, CARD, RRN (Korean resident registration number), IP, SECRET,
written `[KIND_n]`. Within one request (one `Masker`), the same value always gets the same placeholder
(values are compared normalised: digits only for numbers, lower case for e-mail addresses).

Detection favours precision on purpose, with validation beyond the regular expression:
- CARD: 13-19 digits, optionally grouped by one kind of separator (spaces or dashes) in groups of
  3-6, a plausible first digit (2-6 or 9), and a valid Luhn check digit.
- RRN: YYMMDD-GNNNNNN (dash optional), a real calendar date for the century the gender digit G gives
  (1-8), and the mod-11 check digit for numbers issued before its abolition (birth dates before
  2020-10-01; numbers issued since then have no check digit).
- PHONE: `+` and a country code with 8-15 digits in all (E.164), Korean numbers (mobile 010/011/016-9,
  Seoul 02, area codes 031-064, 070, 050x, 15xx/16xx/18xx), and North American (415) 555-2671 /
  415-555-2671. A date, a version or a plain long number is not a phone number.
- IP: dotted-quad IPv4 with each part 0-255; IPv6 validated by `ipaddress`.
- SECRET: API-key-like tokens with known prefixes (sk-..., AKIA/ASIA..., ghp_/gho_/ghs_/ghu_/ghr_,
  github_pat_, xox?-, AIza..., sk_live_/rk_live_, hf_, glpat-, npm_, JWTs), `Bearer <token>`, and
  PEM private-key blocks. A generic `sk-` token must look random (digits and letters, high entropy).
- EMAIL: local@domain.tld.

Boundaries are ASCII-only, so a value glued to Korean text (`hong@example.com으로`) is still found.
Overlaps are resolved by kind precedence SECRET > EMAIL > RRN > CARD > IP > PHONE, then length.
Every pattern is anchored by a look-behind so that a long run without a match costs linear time.
The patterns and validators are in gatekeeping/pii_patterns.py; this module resolves overlaps and masks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

from gatekeeping.pii_patterns import Finding, candidates, luhn_ok, rrn_ok

__all__ = ["KINDS", "POLICIES", "Finding", "Kind", "Masker", "PIIRejected", "PIIResult", "apply_policy", "find",
           "luhn_ok", "mask_text", "rrn_ok"]

Kind = Literal["EMAIL", "PHONE", "CARD", "RRN", "IP", "SECRET"]
KINDS: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "RRN", "IP", "SECRET")
POLICIES = ("off", "mask", "reject")
_PRECEDENCE = {"SECRET": 0, "EMAIL": 1, "RRN": 2, "CARD": 3, "IP": 4, "PHONE": 5}


class PIIRejected(ValueError):
    """Raised under the `reject` policy. Names the kinds found, never the values."""

    def __init__(self, counts: dict[str, int]):
        self.counts = dict(counts)
        self.kinds = tuple(k for k in KINDS if counts.get(k))
        super().__init__("The request contains personal or secret data ("
                         + ", ".join(self.kinds) + ") and this deployment's policy rejects it.")


def find(text: str) -> list[Finding]:
    """Every PII span in `text`, non-overlapping, in order."""
    cands = candidates(text)
    if not cands:
        return cands
    cands.sort(key=lambda f: (_PRECEDENCE[f.kind], -(f.end - f.start), f.start))
    taken = bytearray(len(text))   # 1 where a chosen span lies; candidates overlap little, so ~linear
    chosen: list[Finding] = []
    for f in cands:
        if taken.find(1, f.start, f.end) == -1:
            taken[f.start:f.end] = b"\x01" * (f.end - f.start)
            chosen.append(f)
    chosen.sort(key=lambda f: f.start)
    return chosen


def _normalise(kind: str, value: str) -> str:
    if kind in ("PHONE", "CARD", "RRN"):
        digits = "".join(c for c in value if c.isdigit())
        if kind == "PHONE" and value.startswith("+82"):      # +82 10 ... is 010-...
            digits = "0" + digits[2:].lstrip("0")
        elif kind == "PHONE" and value.startswith("+1") and len(digits) == 11:
            digits = digits[1:]
        return digits
    if kind in ("EMAIL", "IP"):
        return value.lower()
    return value


@dataclass
class Masker:
    """Masks texts of one request, so equal values share a placeholder across all its messages."""

    counts: Counter[str] = field(default_factory=Counter)
    _ids: dict[tuple[str, str], str] = field(default_factory=dict)
    _next: Counter[str] = field(default_factory=Counter)

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, _normalise(kind, value))
        found = self._ids.get(key)
        if found is None:
            self._next[kind] += 1
            found = f"[{kind}_{self._next[kind]}]"
            self._ids[key] = found
        return found

    def mask(self, text: str) -> str:
        findings = find(text)
        if not findings:
            return text
        out: list[str] = []
        pos = 0
        for f in findings:
            out.append(text[pos:f.start])
            out.append(self.placeholder(f.kind, text[f.start:f.end]))
            self.counts[f.kind] += 1
            pos = f.end
        out.append(text[pos:])
        return "".join(out)

    def scan(self, text: str) -> None:
        for f in find(text):
            self.counts[f.kind] += 1


def mask_text(text: str) -> tuple[str, dict[str, int]]:
    m = Masker()
    return m.mask(text), dict(m.counts)


def _map_texts(messages: Iterable[Any], fn: Callable[[str], str]) -> list[Any]:
    """Applies `fn` to every string content and every text content part; returns new messages (dicts
    or msgspec structs / objects with `content`), leaving the input untouched."""
    out = []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else getattr(msg, "content", None)
        if isinstance(content, str):
            new_content: Any = fn(content)
        elif isinstance(content, list):
            new_content = []
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str) \
                        and part.get("type", "text") in ("text", "input_text"):
                    part = {**part, "text": fn(part["text"])}
                new_content.append(part)
        else:
            out.append(msg)
            continue
        if isinstance(msg, dict):
            out.append({**msg, "content": new_content})
        else:
            import msgspec

            out.append(msgspec.structs.replace(msg, content=new_content))
    return out


@dataclass
class PIIResult:
    messages: list[Any]
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def apply_policy(messages: Iterable[Any], policy: str) -> PIIResult:
    """Applies a tenant's / model's PII policy to OpenAI chat messages.

    `off`: returned as they are (no scan). `mask`: every PII value replaced by its placeholder; counts
    by kind. `reject`: raises `PIIRejected` naming the kinds found, else returns them unchanged."""
    messages = list(messages)
    if policy == "off":
        return PIIResult(messages, {})
    masker = Masker()
    if policy == "mask":
        masked = _map_texts(messages, masker.mask)
        return PIIResult(masked, {k: masker.counts[k] for k in KINDS if masker.counts[k]})
    if policy == "reject":
        def scan(text: str) -> str:
            masker.scan(text)
            return text

        _map_texts(messages, scan)
        counts = {k: masker.counts[k] for k in KINDS if masker.counts[k]}
        if counts:
            raise PIIRejected(counts)
        return PIIResult(messages, {})
    raise ValueError(f"unknown PII policy {policy!r}; expected one of {', '.join(POLICIES)}")
