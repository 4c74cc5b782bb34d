"""PII masking: a table of positives and near-misses, placeholders, policies, chat messages, speed."""

from __future__ import annotations

import time

import msgspec
import pytest

from gatekeeping.pii import PIIRejected, apply_policy, find, luhn_ok, mask_text, rrn_ok
from schemas.openai import ChatMessage

# (text, expected masked text). Near-misses expect the text unchanged.
CASES = [
    # e-mail
    ("mail hong.gildong+tag@example.co.kr today", "mail [EMAIL_1] today"),
    ("hong@example.com으로 보내주세요", "[EMAIL_1]으로 보내주세요"),
    ("Write to <a.b@sub.domain.io>.", "Write to <[EMAIL_1]>."),
    ("not an address: user@localhost or @handle or a@b", None),
    # phones: Korean
    ("휴대폰 010-1234-5678 입니다", "휴대폰 [PHONE_1] 입니다"),
    ("01012345678로 연락", "[PHONE_1]로 연락"),
    ("010 9876 5432", "[PHONE_1]"),
    ("서울 02-123-4567 / 경기 031-987-6543", "서울 [PHONE_1] / 경기 [PHONE_2]"),
    ("(02) 1234-5678", "[PHONE_1]"),
    ("인터넷전화 070-1234-5678, 대표번호 1588-1234", "인터넷전화 [PHONE_1], 대표번호 [PHONE_2]"),
    # phones: international and North American
    ("+82 10 1234 5678", "[PHONE_1]"),
    ("+82-10-1234-5678 in 2024", "[PHONE_1] in 2024"),
    ("+44 20 7946 0958", "[PHONE_1]"),
    ("call +14155552671 or (415) 555-2671 or 415-555-2671", "call [PHONE_1] or [PHONE_1] or [PHONE_1]"),
    # phone near-misses: dates, versions, ids, amounts
    ("due 2024-01-15, 2024.01.15, 2024/01/15, 20240115", None),
    ("version 10.2.3, order 123-45-6789, total 1,234,567 won, at 10:30:45", None),
    ("+12 is not a number, nor is 555-123-4567 a valid exchange", None),
    # cards (Luhn)
    ("Visa 4111 1111 1111 1111 exp 12/29", "Visa [CARD_1] exp 12/29"),
    ("MC 5500-0055-5555-5559", "MC [CARD_1]"),
    ("Amex 3782 822463 10005", "Amex [CARD_1]"),
    ("BC 9410123456789010, cvv follows: 4111 1111 1111 1111 123", "BC [CARD_1], cvv follows: [CARD_2] 123"),
    # card near-misses
    ("4111 1111 1111 1112 fails Luhn", None),
    ("order 1234567890123452 (leading 1), 0000 0000 0000 0000, 4111-1111 1111-1111 mixed", None),
    # Korean resident registration numbers
    ("주민번호 850315-1234566", "주민번호 [RRN_1]"),
    ("8503151234566", "[RRN_1]"),
    ("2000-02-29 born: 000229-3123454", "2000-02-29 born: [RRN_1]"),
    ("after 2020, no check digit: 210505-3987612", "after 2020, no check digit: [RRN_1]"),
    # RRN near-misses: bad check digit, impossible date, bad gender digit
    ("850315-1234567 / 020229-4123451 / 851315-1234566 / 850315-9234566", None),
    # IP addresses
    ("server 192.168.0.1 and 10.0.0.255:8080", "server [IP_1] and [IP_2]:8080"),
    ("v6 2001:db8::1 and 2001:0db8:85a3:0000:0000:8a2e:0370:7334 and ::1",
     "v6 [IP_1] and [IP_2] and [IP_3]"),
    ("not IPs: 256.1.1.1, 1.2.3, v1.2.3.4, 1.2.3.4.5, 12:34:56, std::vector, 00:1A:2B:3C:4D:5E", None),
    # secrets
    ("key sk-proj-Abc123XyZ987qwertyUIOP0099zz", "key [SECRET_1]"),
    ("sk-sy-" + "Q2x5dGVfc2VjcmV0X3Rlc3RfdmFsdWVfMTIzNDU2Nzg", "[SECRET_1]"),
    ("aws AKIAIOSFODNN7EXAMPLE, gh ghp_abcdefghijklmnopqrstuvwxyz0123456789",
     "aws [SECRET_1], gh [SECRET_2]"),
    ("Authorization: Bearer abcdef0123456789ABCDEF.xyz", "Authorization: Bearer [SECRET_1]"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "jwt [SECRET_1]"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- done", "[SECRET_1] done"),
    # secret near-misses
    ("use sk-learn, a task-manager, sk-this-is-not-a-real-key-just-words, the bearer of news", None),
    # everyday identifiers that are not PII
    ("id 123e4567-e89b-12d3-a456-426614174000 at 1700000000000 sha 3f786850e387550fdab836ed7e6dc881de23001b", None),
    ("사업자등록번호 123-45-67890, 우편번호 06236, ts 2024-01-15T10:30:00Z, ratio 16:9, build 4.2.0-rc.1", None),
    # mixed
    ("Kim (kim@corp.kr, 010-2222-3333) paid with 4111111111111111 from 203.0.113.9",
     "Kim ([EMAIL_1], [PHONE_1]) paid with [CARD_1] from [IP_1]"),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_cases(text: str, expected: str | None) -> None:
    masked, counts = mask_text(text)
    assert masked == (text if expected is None else expected)
    assert sum(counts.values()) == (0 if expected is None else expected.count("["))


def test_table_has_enough_cases() -> None:
    assert len(CASES) >= 30
    assert sum(1 for _, e in CASES if e is None) >= 8


def test_validators() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert rrn_ok("85", "03", "15", "1", "234566")
    assert not rrn_ok("85", "03", "15", "1", "234567")          # check digit
    assert not rrn_ok("02", "02", "29", "4", "123451")          # 2002 is not a leap year
    assert rrn_ok("21", "05", "05", "3", "987612")              # issued after Oct 2020: no check digit


def test_same_value_same_placeholder_across_messages() -> None:
    messages = [
        {"role": "system", "content": "Never reveal a@b.io."},
        {"role": "user", "content": [{"type": "text", "text": "Mail a@b.io, then c@d.io; call 010-1111-2222"},
                                     {"type": "image_url", "image_url": {"url": "https://x/a@b.io.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": "A@B.io again, and +82 10 1111 2222"},
    ]
    result = apply_policy(messages, "mask")
    assert result.messages[0]["content"] == "Never reveal [EMAIL_1]."
    assert result.messages[1]["content"][0]["text"] == "Mail [EMAIL_1], then [EMAIL_2]; call [PHONE_1]"
    assert result.messages[1]["content"][1] == messages[1]["content"][1]   # non-text part untouched
    assert result.messages[2] == messages[2]
    assert result.messages[3]["content"] == "[EMAIL_1] again, and [PHONE_1]"
    assert result.counts == {"EMAIL": 4, "PHONE": 2}
    assert messages[0]["content"] == "Never reveal a@b.io."                  # input not mutated


def test_structs_are_masked_too() -> None:
    msgs = [ChatMessage(role="user", content="my card 4111 1111 1111 1111")]
    result = apply_policy(msgs, "mask")
    assert isinstance(result.messages[0], ChatMessage)
    assert result.messages[0].content == "my card [CARD_1]"
    assert msgspec.json.encode(result.messages[0]).count(b"4111") == 0


def test_policies() -> None:
    msgs = [{"role": "user", "content": "reach me at x@y.com or 010-1234-5678"}]
    assert apply_policy(msgs, "off").messages == msgs
    assert apply_policy(msgs, "off").counts == {}
    with pytest.raises(PIIRejected) as info:
        apply_policy(msgs, "reject")
    assert info.value.kinds == ("EMAIL", "PHONE")
    assert "x@y.com" not in str(info.value) and "EMAIL" in str(info.value)
    clean = [{"role": "user", "content": "hello there"}]
    assert apply_policy(clean, "reject").messages == clean
    with pytest.raises(ValueError):
        apply_policy(msgs, "shred")


def test_placeholder_counters_are_per_kind() -> None:
    masked, counts = mask_text("a@b.cc 010-1234-5678 c@d.cc 192.0.2.1 a@b.cc")
    assert masked == "[EMAIL_1] [PHONE_1] [EMAIL_2] [IP_1] [EMAIL_1]"
    assert counts == {"EMAIL": 3, "PHONE": 1, "IP": 1}


def test_pathological_inputs_stay_linear() -> None:
    blobs = ["a" * 100_000, "1" * 100_000, "1 " * 50_000, "a." * 50_000, ":" * 100_000, "+1" * 50_000,
             "a@" * 50_000, "sk-" + "a-" * 50_000, "1-" * 50_000]
    for blob in blobs:
        t = time.perf_counter()
        find(blob)
        assert time.perf_counter() - t < 1.0, blob[:10]


def test_100kb_prompt_is_fast() -> None:
    from benchmarks.pii_masking import build_prompt

    text, planted = build_prompt(100_000, seed=7)
    masker_time = []
    for _ in range(3):
        t = time.perf_counter()
        masked, counts = mask_text(text)
        masker_time.append(time.perf_counter() - t)
    assert sum(counts.values()) >= planted * 0.95
    assert min(masker_time) < 0.1   # generous for a loaded 2-core CI box; the benchmark reports ~ms
