"""Continuing a stream from delivered text: the echo of the prefix is removed, never real text."""

from __future__ import annotations

import random

import pytest

from orchestration.continuation import PrefixEchoStripper, continuation_body, delivered
from schemas.events import Delta, Restarted, Started


def run(prefix: str, pieces: list[str]) -> str:
    s = PrefixEchoStripper(prefix)
    return "".join(s.feed(p) for p in pieces) + s.flush()


@pytest.mark.parametrize("pieces, expected", [
    (["1, 2, 3, 4, 5, 6, ", "7", ",", " ", "8"], " 7, 8"),       # llama-server: echo, re-tokenized
    ([" ", "7", ",", " 8"], " 7, 8"),                              # vLLM: no echo
    (["1, 2,", " 3, 4", ", 5, 6,", " 7"], " 7"),                   # echo split over chunks
    (["Sure"], "Sure"),                                            # diverges at once
])
def test_strips_only_an_echo(pieces: list[str], expected: str):
    assert run("1, 2, 3, 4, 5, 6,", pieces) == expected


def test_unfinished_match_at_end_is_output():
    assert run("abc def", ["abc"]) == "abc"


def test_random_chunking_gives_the_same_text():
    rng = random.Random(7)
    prefix = "The quick brown fox jumps over"
    echo_and_more = "The quick  brown fox jumps over the lazy dog."
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(echo_and_more)), 5))
        pieces = [echo_and_more[a:b] for a, b in zip([0, *cuts], [*cuts, len(echo_and_more)])]
        assert run(prefix, pieces) == " the lazy dog."


def test_delivered_counts_text_after_the_last_restart():
    events = [Started(seq=1, attempt=1), Delta(seq=2, attempt=1, content="ab", tokens=2),
              Restarted(seq=3, attempt=2, reason="x"), Delta(seq=4, attempt=2, content="c", tokens=1)]
    d = delivered(events)
    assert (d.text, d.tokens, d.last_seq) == ("c", 1, 4)


def test_continuation_body_appends_the_prefix_and_spends_tokens():
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "count"}]}
    out = continuation_body(body, "1, 2,", 4)
    assert out["messages"][-1] == {"role": "assistant", "content": "1, 2,"}
    assert out["continue_final_message"] is True and out["add_generation_prompt"] is False
    assert out["max_tokens"] == 96 and body["max_tokens"] == 100
