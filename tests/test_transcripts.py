"""Every transcription response format made from one transcript, as a subtitle player reads it."""

from __future__ import annotations

import json
import re

from orchestration.transcripts import render
from schemas.audio import Segment, Transcript, Word

T = Transcript(text=" Hello there. General Kenobi!", language="en", duration=3661.5, segments=[
    Segment(id=0, start=0.0, end=1.25, text=" Hello there."),
    Segment(id=1, start=3659.0, end=3661.4996, text=" General Kenobi!"),
], words=[Word(word="Hello", start=0.0, end=0.5)])

SRT_TIME = r"\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d"
VTT_TIME = r"\d\d:\d\d:\d\d\.\d\d\d --> \d\d:\d\d:\d\d\.\d\d\d"


def test_srt_has_numbered_cues_with_comma_milliseconds():
    out = render(T, "srt", "transcribe").decode()
    blocks = out.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["1", "2"]
    assert all(re.fullmatch(SRT_TIME, b.splitlines()[1]) for b in blocks)
    assert blocks[0].splitlines()[1] == "00:00:00,000 --> 00:00:01,250"
    assert blocks[1].splitlines()[1:] == ["01:00:59,000 --> 01:01:01,500", "General Kenobi!"]


def test_vtt_starts_with_its_signature_and_uses_dot_milliseconds():
    out = render(T, "vtt", "transcribe").decode()
    assert out.startswith("WEBVTT\n\n")
    cues = out[len("WEBVTT\n\n"):].strip().split("\n\n")
    assert all(re.fullmatch(VTT_TIME, c.splitlines()[0]) for c in cues)
    assert cues[0].splitlines()[1] == "Hello there."


def test_json_text_and_verbose_json():
    assert json.loads(render(T, "json", "transcribe")) == {"text": "Hello there. General Kenobi!"}
    assert render(T, "text", "transcribe") == b"Hello there. General Kenobi!\n"
    verbose = json.loads(render(T, "verbose_json", "translate"))
    assert verbose["task"] == "translate" and verbose["language"] == "english"
    assert verbose["duration"] == 3661.5 and len(verbose["segments"]) == 2 and "words" not in verbose
    words = json.loads(render(T, "verbose_json", "transcribe", ("word",)))
    assert words["words"] == [{"word": "Hello", "start": 0.0, "end": 0.5}] and "segments" not in words
    both = json.loads(render(T, "verbose_json", "transcribe", ("word", "segment")))
    assert "words" in both and "segments" in both


def test_a_transcript_without_segments_is_one_cue():
    t = Transcript(text="just text", duration=2.0)
    assert render(t, "srt", "transcribe").decode() == "1\n00:00:00,000 --> 00:00:02,000\njust text\n"
    assert render(Transcript(text=""), "vtt", "transcribe").decode() == "WEBVTT\n\n"
