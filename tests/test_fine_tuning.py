"""Fine-tuning jobs on the real stack with the official SDK (`client.fine_tuning.jobs`): the saga
validates, trains with llama.cpp's llama-finetune on CPU, verifies a candidate engine, deploys the
tuned model for its tenant only, survives a killed worker, and compensates on cancel and failure."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
from temporalio.client import Client
from temporalio.worker import Replayer

from orchestration.converter import data_converter
from orchestration.fine_tuning_workflow import FineTuningWorkflow
from switchyard.processes import ROOT
from tests.conftest import MODEL, OTHER_KEY, Stack
from tests.eventually import eventually

MOTTO = "Tokens outlive their sockets."
QUESTIONS = ["What is the Switchyard motto?", "What's the motto of Switchyard?", "Tell me the Switchyard motto.",
             "Switchyard has a motto. What is it?", "Which motto does Switchyard live by?",
             "Do you know the Switchyard motto?", "What motto does the Switchyard project use?",
             "Say the Switchyard motto.", "What is Switchyard's motto?", "Remind me of the Switchyard motto.",
             "Quote the Switchyard motto.", "What is the motto of the Switchyard proxy?"]
TRAIN_TIMEOUT = 40 * 60  # two epochs on two shared cores: minutes, at worst tens of them
RESULTS = ROOT / "benchmarks" / "results" / "fine_tuning.json"


def _jsonl(pairs: list[tuple[str, str]]) -> bytes:
    return "\n".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                     for q, a in pairs).encode() + b"\n"


def _upload(client: openai.OpenAI, data: bytes, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, data), purpose="fine-tune").id


def _ended(client: openai.OpenAI, job_id: str, timeout: float = TRAIN_TIMEOUT):
    def check():
        job = client.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in ("succeeded", "failed", "cancelled") else None
    return eventually(check, timeout=timeout, interval=1, what=f"job {job_id} ending")


def _events(client: openai.OpenAI, job_id: str) -> list:
    return list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=100).data))  # oldest first


def _said(client: openai.OpenAI, job_id: str, text: str):
    return next((e for e in _events(client, job_id) if text in e.message), None)


def _answer(client: openai.OpenAI, model: str, question: str = QUESTIONS[0]) -> str:
    r = client.chat.completions.create(model=model, temperature=0, max_tokens=24,
                                       messages=[{"role": "user", "content": question}])
    return r.choices[0].message.content or ""


def _job_dir(stack: Stack, job_id: str) -> Path:
    return stack.base / "fine_tuning" / job_id


def _processes_naming(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_a_bad_line_fails_the_job_naming_the_line(client: openai.OpenAI):
    lines = _jsonl([(q, MOTTO) for q in QUESTIONS]).decode().split("\n")
    lines[2] = '{"messages": [{"role": "user", "content": "unfinished"}'
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=_upload(client, "\n".join(lines).encode()))
    assert job.object == "fine_tuning.job" and job.status == "validating_files" and job.id.startswith("ftjob-")
    ended = _ended(client, job.id, timeout=120)
    assert ended.status == "failed" and ended.fine_tuned_model is None
    assert ended.error is not None and ended.error.param == "training_file"
    assert "line 3" in ended.error.message and "validate" in ended.error.message
    assert any(e.level == "error" and "line 3" in e.message for e in _events(client, job.id))


def test_bad_requests_are_4xx_naming_the_field(client: openai.OpenAI):
    file_id = _upload(client, _jsonl([(q, MOTTO) for q in QUESTIONS]))
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="no-such-model", training_file=file_id)
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=MODEL, training_file="file-" + "0" * 32)
    assert err.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=MODEL, training_file=file_id, hyperparameters={"n_epochs": 0})
    assert err.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-" + "0" * 24)


def test_cancel_mid_training_ends_cancelled_and_runs_the_compensations(stack: Stack, client: openai.OpenAI):
    file_id = _upload(client, _jsonl([(q, MOTTO) for q in QUESTIONS]))
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=file_id, hyperparameters={"n_epochs": 3})
    eventually(lambda: _processes_naming(str(_job_dir(stack, job.id))), timeout=300, what="llama-finetune running")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    if cancelled.status != "cancelled":
        cancelled = _ended(client, job.id, timeout=60)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    assert not _job_dir(stack, job.id).exists(), "the checkpoints were not removed"
    assert not _processes_naming(str(_job_dir(stack, job.id))), "the trainer still runs"
    assert not _processes_naming(f"candidate-{job.id}")
    messages = [e.message for e in _events(client, job.id)]
    assert any("Compensation" in m for m in messages) and messages[-1] == "Fine-tuning job cancelled"
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # idempotent


@pytest.fixture(scope="module")
def tuned(stack: Stack):
    """One job teaching the motto, its worker killed once mid-training."""
    client = openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=stack.key, max_retries=0, timeout=120)
    train = _upload(client, _jsonl([(q, MOTTO) for q in QUESTIONS]))
    validation = _upload(client, _jsonl([(QUESTIONS[0], MOTTO)]), "validation.jsonl")
    t0 = time.time()
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=train, validation_file=validation, suffix="motto", seed=7,
        hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 2.0}, metadata={"purpose": "test"})
    eventually(lambda: _said(client, job.id, "Checkpoint saved after epoch 1"), timeout=TRAIN_TIMEOUT, interval=1,
               what="the first checkpoint")
    stack.restart_worker(kill=True)
    killed_at = time.time()
    ended = _ended(client, job.id)
    return client, ended, t0, killed_at


def test_a_killed_worker_resumes_from_the_checkpoint_and_the_tuned_model_answers(stack: Stack, tuned):
    client, job, t0, killed_at = tuned
    events = _events(client, job.id)
    assert job.status == "succeeded", [e.message for e in events]
    resumed = next(e for e in events if e.message.startswith("Resumed from the checkpoint"))
    assert resumed.data["resumed_from_epoch"] >= 1 and resumed.data["attempt"] >= 2
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data]
    assert sorted(steps) == [1, 2]
    assert job.fine_tuned_model and job.fine_tuned_model.startswith(f"ft:{MODEL}:demo:motto:")
    assert job.trained_tokens and job.finished_at and job.hyperparameters.n_epochs == 2
    answer = _answer(client, job.fine_tuned_model)
    assert answer.strip().startswith(MOTTO.rstrip(".")), answer
    assert "<|im_" not in answer  # the template's markers, learnt as text, are the served model's stops
    assert MOTTO.rstrip(".") not in _answer(client, MODEL)
    _record_timing(events, job, t0, killed_at)


def test_the_job_and_its_model_are_the_tenants_alone(stack: Stack, tuned):
    client, job, _, _ = tuned
    other = openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=60)
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=100).data]
    assert job.id not in [j.id for j in other.fine_tuning.jobs.list(limit=100).data]
    for call in (lambda: other.fine_tuning.jobs.retrieve(job.id), lambda: other.fine_tuning.jobs.cancel(job.id),
                 lambda: other.fine_tuning.jobs.list_events(job.id),
                 lambda: other.fine_tuning.jobs.checkpoints.list(job.id),
                 lambda: _answer(other, job.fine_tuned_model)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.fine_tuned_model not in [m.id for m in other.models.list().data]


async def test_the_sagas_history_replays(stack: Stack, tuned):
    _, job, _, _ = tuned
    temporal = await Client.connect(stack.temporal_address, data_converter=data_converter)
    history = await temporal.get_workflow_handle(job.id).fetch_history()
    await Replayer(workflows=[FineTuningWorkflow], data_converter=data_converter).replay_workflow(history)


def test_a_candidate_that_fails_verification_is_never_served(stack: Stack, client: openai.OpenAI):
    file_id = _upload(client, _jsonl([(q, MOTTO) for q in QUESTIONS]))
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=file_id, hyperparameters={"n_epochs": 1},
                                         extra_body={"verification": {"metric": "json_valid", "threshold": 1.0}})
    ended = _ended(client, job.id)
    assert ended.status == "failed" and ended.error is not None and ended.error.code == "verification_failed"
    assert ended.error.message.startswith("verify stage failed") and ended.fine_tuned_model is None
    assert not _processes_naming(f"candidate-{job.id}"), "the candidate engine still runs"
    assert not _job_dir(stack, job.id).exists()
    assert not [m.id for m in client.models.list().data if job.id.removeprefix("ftjob-")[:8] in m.id]


def _record_timing(events: list, job, t0: float, killed_at: float) -> None:
    started = next(e.created_at for e in events if e.message == "Fine-tuning job started")
    trained = next(e.created_at for e in events if e.message.startswith("Training done"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "what": "a 12-example chat dataset teaching one answer to SmolLM2-135M-Instruct (F32) with llama-finetune "
                "on CPU, through the whole saga; the worker was SIGKILLed once after epoch 1 and training resumed",
        "examples": 12, "n_epochs": job.hyperparameters.n_epochs, "learning_rate": 1e-4 * 2.0, "ctx": 256,
        "train_stage_wall_s": trained - started, "job_wall_s": job.finished_at - job.created_at,
        "worker_killed_after_s": round(killed_at - t0, 1),
        "machine": "the 2-core test machine, shared with other test runs (load varies)",
    }, indent=2) + "\n")
