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
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

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


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


# ---- patterns (compiled once) ---------------------------------------------------------------------
# Speed: CPython's `re` only skips ahead quickly when a pattern starts with a literal or a character
# class, so the boundary look-behinds sit *after* the first character, 2 wide: `[0-9](?<![0-9A-Za-z].)`
# means "a digit not preceded by a letter or digit". E-mail, secrets and IPv6 are searched from
# literal anchors (`@`, known prefixes, `:`) found with `str.find`.
_A = r"A-Za-z0-9"
_NB = r"(?![0-9]|[.\-][0-9])"      # the number does not go on

_EMAIL_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
_EMAIL_DOMAIN = re.compile(
    rf"@[{_A}](?:[{_A}\-]{{0,62}}[{_A}])?(?:\.[{_A}](?:[{_A}\-]{{0,62}}[{_A}])?)*\.[A-Za-z]{{2,24}}"
    rf"(?![{_A}\-])")

# Possessive (`{0,3}+`, `++`): the whole run of digit groups is read once and never re-split; the
# former `(?:[ .\-]?[0-9]{1,6}){1,6}` + look-ahead tried ~6^6 splits of a long digit run. `_phone_end`
# then keeps its longest prefix of 8-15 digits.
_PHONE_INTL = re.compile(r"\+(?<![0-9A-Za-z+].)[1-9][0-9]{0,3}+(?:[ .\-]?\(0?[0-9]{1,4}\)|[ .\-]?[0-9]++)++")
_KR_AREA = r"(?:2|3[1-3]|4[1-4]|5[1-5]|6[1-4]|70|50[2-8])"
_PHONE_KR = re.compile(
    r"(?:0(?<![0-9A-Za-z+.\-].)(?:"
    r"1[016789](?P<s1>[ .\-]?)[0-9]{3,4}(?P=s1)[0-9]{4}"           # mobile, one kind of separator
    rf"|{_KR_AREA}[ .\-][0-9]{{3,4}}[ .\-][0-9]{{4}})"             # landline
    rf"|\((?<![0-9A-Za-z+.\-].)0{_KR_AREA}\) ?[0-9]{{3,4}}[ .\-][0-9]{{4}}"
    r"|1(?<![0-9A-Za-z+.\-].)[568][0-9]{2}-[0-9]{4}"               # 1588-1234 style
    r")" + _NB)
_PHONE_NA = re.compile(
    r"[(2-9](?<![0-9A-Za-z+.\-].)(?:(?<=\()[2-9][0-9]{2}\) ?|(?<=[2-9])[0-9]{2}-)"
    r"[2-9][0-9]{2}-[0-9]{4}" + _NB)

_CARD = re.compile(r"[0-9](?<![0-9A-Za-z.\-].)(?:[ \-]?[0-9]){12,18}" + _NB)
_RRN = re.compile(
    r"(?P<yy>[0-9](?<![0-9A-Za-z.\-].)[0-9])(?P<mm>0[1-9]|1[0-2])(?P<dd>0[1-9]|[12][0-9]|3[01])"
    r" ?-? ?(?P<g>[1-8])(?P<rest>[0-9]{6})(?![0-9])")
_IPV4 = re.compile(r"[0-9](?<![0-9A-Za-z.].)[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9]|\.[0-9])")
_V6_SEED = re.compile(r":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)")
_V6_CHARS = frozenset("0123456789abcdefABCDEF:.")

_SECRET_ANCHOR = re.compile(r"sk[-_]|rk_|A(?:KIA|SIA|BIA|CCA|GPA|IDA|ROA|NPA|IPA|Iza)|gh[pousr]_|github_pat_|"
                            r"xox|hf_|glpat-|npm_|eyJ")
_SECRET = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:"
    r"(?P<sk>sk-[A-Za-z0-9_\-]{20,})"
    r"|(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|AIPA)[0-9A-Z]{16}(?![0-9A-Za-z])"
    r"|gh[pousr]_[A-Za-z0-9]{30,255}"
    r"|github_pat_[A-Za-z0-9_]{40,255}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,250}"
    r"|AIza[0-9A-Za-z_\-]{35}"
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|glpat-[A-Za-z0-9_\-]{20,}"
    r"|npm_[A-Za-z0-9]{36}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"
    r")")
_BEARER = re.compile(r"(?i)(?<![A-Za-z0-9])bearer[ \t]+(?P<tok>[A-Za-z0-9._~+/\-]{16,}=*)")
_PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")


# ---- validators -----------------------------------------------------------------------------------
def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_ok(text: str) -> bool:
    digits = "".join(c for c in text if c.isdigit())
    if not 13 <= len(digits) <= 19 or digits[0] not in "234569":
        return False
    seps = {c for c in text if not c.isdigit()}
    if len(seps) > 1:
        return False
    if seps:
        groups = re.split(r"[ \-]", text)
        if len(groups) < 3 or any(not 3 <= len(g) <= 6 for g in groups[:-1]) or not 1 <= len(groups[-1]) <= 6:
            return False
    if len(set(digits)) == 1:
        return False
    return luhn_ok(digits)


_RRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
_CENTURY = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}


def rrn_ok(yy: str, mm: str, dd: str, g: str, rest: str) -> bool:
    import datetime as _dt

    year = _CENTURY[g] + int(yy)
    try:
        born = _dt.date(year, int(mm), int(dd))
    except ValueError:
        return False
    if born > _dt.date.today():
        return False
    if born >= _dt.date(2020, 10, 1):  # numbers issued since Oct 2020 carry no check digit
        return True
    digits = [int(c) for c in yy + mm + dd + g + rest]
    s = sum(w * d for w, d in zip(_RRN_WEIGHTS, digits))
    check = (11 - s % 11) % 10
    if digits[12] == check:
        return True
    return g in "5678" and digits[12] == (check + 2) % 10  # older foreigner numbers


def _entropy(s: str) -> float:
    counts = Counter(s)
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _random_looking(token: str) -> bool:
    body = token.replace("-", "").replace("_", "")
    return (any(c.isdigit() for c in body) and any(c.isalpha() for c in body)
            and _entropy(body) >= 3.5)


def _group_ends(text: str) -> list[int]:
    """Ends of the digit groups of a number written in groups, longest prefix first."""
    n = len(text)
    return [i + 1 for i in range(n - 1, -1, -1)
            if (text[i].isdigit() or text[i] == ")") and (i + 1 == n or text[i + 1] in " .-(")]


def _longest_valid(text: str, ok: Callable[[str], bool]) -> int:
    """Length of the longest group-aligned prefix of `text` that `ok` accepts (0: none). A card number
    followed by its CVV, or a phone number followed by a year, is still found."""
    for end in _group_ends(text):
        if ok(text[:end]):
            return end
    return 0


def _phone_end(text: str) -> int:
    """Like `_longest_valid` with 8-15 digits, but reads no further than the 16th digit."""
    n, digits, best = len(text), 0, 0
    for i, ch in enumerate(text):
        if ch.isdigit():
            digits += 1
            if digits > 15:
                break
        if digits >= 8 and (ch.isdigit() or ch == ")") and (i + 1 == n or text[i + 1] in " .-("):
            best = i + 1
    return best


# ---- detection --------------------------------------------------------------------------------------
def _ipv4_ok(text: str) -> bool:
    return all(int(o) <= 255 and (len(o) == 1 or o[0] != "0") for o in text.split("."))


def _find_emails(text: str, add: Callable[[Finding], None]) -> None:
    local = _EMAIL_LOCAL
    p = text.find("@")
    while p != -1:
        s = p
        while s > 0 and text[s - 1] in local and p - s <= 64:
            s -= 1
        if s < p and p - s <= 64:
            m = _EMAIL_DOMAIN.match(text, p)
            if m is not None:
                add(Finding("EMAIL", s, m.end()))
                p = text.find("@", m.end())
                continue
        p = text.find("@", p + 1)


def _find_secrets(text: str, add: Callable[[Finding], None]) -> None:
    for anchor in _SECRET_ANCHOR.finditer(text):
        m = _SECRET.match(text, anchor.start())
        if m is not None and (m.group("sk") is None or _random_looking(m.group("sk")[3:])):
            add(Finding("SECRET", m.start(), m.end()))
    for needle in ("earer", "EARER"):
        p = text.find(needle)
        while p != -1:
            if p > 0:
                m = _BEARER.match(text, p - 1)
                if m is not None:
                    add(Finding("SECRET", m.start("tok"), m.end("tok")))
            p = text.find(needle, p + 5)
    if "PRIVATE KEY-----" in text:   # BEGIN..first END; BEGINs without an END are not searched again
        pos = 0
        while (begin := _PEM_BEGIN.search(text, pos)) and (end := _PEM_END.search(text, begin.end())):
            add(Finding("SECRET", begin.start(), end.end()))
            pos = end.end()


def _find_ipv6(text: str, add: Callable[[Finding], None]) -> None:
    n = len(text)
    chars = _V6_CHARS
    pos = 0
    while True:
        m = _V6_SEED.search(text, pos)
        if m is None:
            return
        s, e = m.start(), m.end()
        while s > 0 and text[s - 1] in chars and m.start() - s < 45:
            s -= 1
        while e < n and text[e] in chars and e - s < 50:
            e += 1
        pos = e
        while e > s and text[e - 1] == ".":
            e -= 1
        while s < e and text[s] == ".":
            s += 1
        if (s > 0 and (text[s - 1].isascii() and text[s - 1].isalnum())) or \
                (e < n and text[e].isascii() and text[e].isalnum()):
            continue
        candidate = text[s:e]
        if candidate.strip(":") == "":
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        add(Finding("IP", s, e))


def find(text: str) -> list[Finding]:
    """Every PII span in `text`, non-overlapping, in order."""
    cands: list[Finding] = []
    add = cands.append
    _find_secrets(text, add)
    if "@" in text:
        _find_emails(text, add)
    for m in _RRN.finditer(text):
        if rrn_ok(m["yy"], m["mm"], m["dd"], m["g"], m["rest"]):
            add(Finding("RRN", m.start(), m.end()))
    for m in _CARD.finditer(text):
        end = _longest_valid(m.group(), _card_ok)
        if end:
            add(Finding("CARD", m.start(), m.start() + end))
    for m in _IPV4.finditer(text):
        if _ipv4_ok(m.group()):
            add(Finding("IP", m.start(), m.end()))
    if "+" in text:
        for m in _PHONE_INTL.finditer(text):
            end = _phone_end(m.group())
            if end:
                add(Finding("PHONE", m.start(), m.start() + end))
    for pattern in (_PHONE_KR, _PHONE_NA):
        for m in pattern.finditer(text):
            add(Finding("PHONE", m.start(), m.end()))
    if ":" in text:
        _find_ipv6(text, add)
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
