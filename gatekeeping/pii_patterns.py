"""The PII patterns and their validators: where in a text each kind of value may be, as candidate spans
that can overlap (gatekeeping/pii.py chooses among them and masks). Pure functions, compiled once."""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable


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


def candidates(text: str) -> list[Finding]:
    """Every span in `text` that some pattern matches and its validator accepts; they may overlap."""
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
    return cands
