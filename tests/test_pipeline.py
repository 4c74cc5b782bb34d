"""The `meeting-notes` pipeline: an audio upload → Whisper on Triton (queue gpu.audio) → notes from
the chat model (queue gpu.test), each stage its own activity, progress in the job's status and
events, and a failing later stage retried without running the earlier one again."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from temporalio.api.enums.v1 import EventType

from tests.conftest import Stack


@pytest.fixture(scope="module")
def meeting(stack: Stack) -> bytes:
    client = openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=stack.key, max_retries=0, timeout=60)
    return client.audio.speech.create(
        model="hibari-tts", voice="heart", response_format="mp3",
        input="We agreed to ship the new billing page on Friday. Anna will write the release notes.").content


def submit(http: httpx.Client, model: str, audio: bytes) -> str:
    r = http.post("/v1/audio/transcriptions", data={"model": model}, files={"file": ("meeting.mp3", audio)},
                  headers={"prefer": "respond-async"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def named_events(http: httpx.Client, job_id: str) -> list[tuple[str, dict]]:
    out, name = [], None
    for line in http.get(f"/v1/jobs/{job_id}/events").text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name:
            out.append((name, json.loads(line[6:])))
            name = None
    return out


def test_meeting_notes_end_to_end(stack: Stack, http: httpx.Client, meeting: bytes):
    job_id = submit(http, "meeting-notes", meeting)
    seen_stages = set()
    deadline = time.monotonic() + 120
    while (view := http.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        if view["status"] == "running":
            seen_stages.add(view["stage"])
        time.sleep(0.05)
    assert view["status"] == "succeeded" and view["model"] == "meeting-notes"
    assert view["stages"] == ["transcribe", "summarize"]
    assert seen_stages and seen_stages <= {"transcribe", "summarize"}  # the running stage, by name
    running = [(e["stage"], e["attempt"]) for name, e in named_events(http, job_id) if name == "job.running"]
    assert running == [("transcribe", 1), ("summarize", 1)]
    notes = http.get(f"/v1/jobs/{job_id}/result").json()["text"]
    assert len(notes.split()) >= 3  # SmolLM2-135M's notes: their wording is the model's business


def test_the_synchronous_call_answers_with_the_notes(client: openai.OpenAI, meeting: bytes):
    out = client.audio.transcriptions.create(model="meeting-notes", file=("meeting.mp3", meeting))
    assert out.text.strip()
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="meeting-notes", file=("meeting.mp3", meeting),
                                           response_format="srt")
    assert info.value.body["param"] == "response_format"


async def test_a_failing_summary_is_retried_without_transcribing_again(stack: Stack, http: httpx.Client,
                                                                        meeting: bytes, temporal):
    job_id = submit(http, "meeting-notes-flaky", meeting)  # its summary engine answers 503 twice
    await temporal.get_workflow_handle(job_id).result()
    from tests.fakes.vllm import REPLY

    assert http.get(f"/v1/jobs/{job_id}/result").json() == {"text": REPLY}
    history = await temporal.get_workflow_handle(job_id).fetch_history()
    scheduled = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    started = [e.activity_task_started_event_attributes.attempt for e in history.events
               if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
    assert [e.activity_task_scheduled_event_attributes.task_queue.name for e in scheduled] == ["gpu.audio", "gpu.test"]
    assert started == [1, 3]  # the transcription once; the summary on its third attempt
    running = [(e["stage"], e["attempt"]) for name, e in named_events(http, job_id) if name == "job.running"]
    assert running == [("transcribe", 1), ("summarize", 1), ("summarize", 2), ("summarize", 3)]
    # The summary stage was given the transcript as its context.
    assert any("billing" in s.lower() and "scenario=503x2" in s for s in stack.fake.seen)
