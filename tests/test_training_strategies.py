"""The fine-tuning saga's strategies on their own: the uploaded-file DataSource (errors name the line),
the held-out-cases Verifier and its metrics, and the ExternalTrainer against a fake training service."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest

from orchestration.training.data import UploadedFile, parse_examples, render_dataset
from orchestration.training.external import ExternalTrainer, ExternalTrainerError
from orchestration.training.protocols import DataError, Example
from orchestration.training.verifier import HeldOutCases, score
from schemas.fine_tuning import TrainingPlan, TrainProgress, VerificationSpec
from switchyard.processes import free_port
from tests.eventually import eventually_async
from tests.fakes.trainer import FakeTrainer


def _line(q: str, a: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})


GOOD = "\n".join(_line(f"question {i}?", f"answer {i}.") for i in range(12)).encode()


@pytest.mark.parametrize("line3, problem", [
    ("{not json", "line 3: not valid JSON"),
    ('{"prompt": "x", "completion": "y"}', 'line 3: expected an object with a "messages" array'),
    (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "line 3: the last message must be the assistant"),
    (json.dumps({"messages": [{"role": "robot", "content": "q"}]}), "line 3: messages[0] needs a role"),
    (json.dumps({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}),
     "line 3: messages[0] needs a non-empty string content"),
])
def test_a_bad_line_is_named_by_its_number(line3: str, problem: str):
    lines = GOOD.decode().split("\n")
    lines[2] = line3
    with pytest.raises(DataError) as err:
        parse_examples("\n".join(lines).encode())
    assert str(err.value).startswith(problem)


def test_blank_lines_are_skipped_but_counted():
    data = GOOD.decode().split("\n")
    data.insert(1, "")
    data[5] = "oops"
    with pytest.raises(DataError, match="^line 6: not valid JSON"):
        parse_examples("\n".join(data).encode())


async def test_without_a_validation_file_the_last_tenth_is_held_out():
    prepared = await UploadedFile(GOOD).collect()
    assert [e.line for e in prepared.held_out] == [12]
    assert len(prepared.train) == 11
    with_validation = await UploadedFile(GOOD, _line("v?", "w.").encode()).collect()
    assert len(with_validation.train) == 12 and with_validation.held_out[0].answer == "w."


def test_the_trainer_text_is_the_chats_in_the_models_layout():
    text = render_dataset(parse_examples(GOOD)[:1], min_chars=200).decode()
    assert text.startswith("<|im_start|>user\nquestion 0?<|im_end|>\n<|im_start|>assistant\nanswer 0.<|im_end|>\n")
    assert len(text) >= 200


@pytest.mark.parametrize("metric, expected, got, ok", [
    ("exact", "Tokens outlive their sockets.", "  tokens outlive their   sockets. ", True),
    ("exact", "Tokens outlive their sockets.", "Tokens outlive their sockets. Indeed.", False),
    ("contains", "Tokens outlive their sockets.", "Our motto: Tokens outlive their sockets. Yes", True),
    ("contains", "Tokens outlive their sockets.", "Sockets outlive tokens.", False),
    ("json_valid", "", '{"a": 1}', True),
    ("json_valid", "", "{a: 1}", False),
])
def test_metrics(metric: str, expected: str, got: str, ok: bool):
    assert score(metric, expected, got) is ok


def _answering(text: str):
    async def generate(messages, max_tokens):
        return text
    return generate


async def test_the_verifier_needs_the_threshold_and_no_worse_than_the_base():
    cases = [Example(line=1, messages=[{"role": "user", "content": "motto?"},
                                       {"role": "assistant", "content": "Tokens outlive their sockets."}])]
    spec = VerificationSpec(metric="contains", threshold=1.0)
    good = await HeldOutCases().verify(cases, _answering("Tokens outlive their sockets."), _answering("no idea"), spec)
    assert good.passed and good.candidate_score == 1.0 and good.base_score == 0.0
    bad = await HeldOutCases().verify(cases, _answering("no idea"), _answering("no idea"), spec)
    assert not bad.passed and "under the threshold" in bad.reason
    worse = await HeldOutCases().verify(cases, _answering("no"), _answering("Tokens outlive their sockets."),
                                        VerificationSpec(threshold=0.0))
    assert not worse.passed and "base model" in worse.reason


@pytest.fixture
def fake_trainer():
    fake = FakeTrainer()
    port = free_port()
    fake.start(port)
    yield fake, f"http://127.0.0.1:{port}"
    fake.stop()


PLAN = TrainingPlan(n_epochs=3, batch_size=1, learning_rate=1e-4, seed=1, checkpoint_every=1)


async def test_the_external_trainer_submits_polls_and_heartbeats(fake_trainer):
    fake, url = fake_trainer
    beats: list[TrainProgress] = []
    final = await ExternalTrainer(url, poll_s=0.01).train("ftjob-x", "base", b"text", PLAN, TrainProgress(),
                                                            lambda p: beats.append(msgspec.structs.replace(p)))
    assert final.checkpoint == "s3://models/final" and final.epochs_done == 3
    assert [b.epochs_done for b in beats] == [1, 2, 3]
    assert fake.jobs["ext-ftjob-x"]["text"] == b"text"


async def test_the_external_trainer_resumes_from_the_checkpoint_it_is_given(fake_trainer):
    fake, url = fake_trainer
    start = TrainProgress(epochs_done=2, checkpoint="s3://ckpt/epoch-2")
    final = await ExternalTrainer(url, poll_s=0.01).train("ftjob-r", "base", b"t", PLAN, start, lambda p: None)
    assert fake.jobs["ext-ftjob-r"]["resumed_from"] == 2 and final.resumed_from == 2 and final.epochs_done == 3


async def test_the_external_trainers_failure_and_cancel(fake_trainer):
    fake, url = fake_trainer
    fake.fail_at_epoch = 2
    with pytest.raises(ExternalTrainerError, match="out of GPU memory"):
        await ExternalTrainer(url, poll_s=0.01).train("ftjob-f", "base", b"t", PLAN, TrainProgress(), lambda p: None)
    fake.fail_at_epoch = 0
    slow = asyncio.ensure_future(ExternalTrainer(url, poll_s=0.5).train(
        "ftjob-c", "base", b"t", TrainingPlan(n_epochs=100, batch_size=1, learning_rate=1e-4, seed=1,
                                              checkpoint_every=1), TrainProgress(), lambda p: None))
    await eventually_async(lambda: "ext-ftjob-c" in fake.jobs, what="the job submitted")
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert fake.cancelled == ["ext-ftjob-c"] and fake.jobs["ext-ftjob-c"]["status"] == "cancelled"


FAKE_FINETUNE = """#!{python}
import os, sys, time
args = sys.argv[1:]
opt = {{args[i]: args[i + 1] for i in range(0, len(args) - 1) if args[i].startswith("-")}}
with open(os.environ["FAKE_FINETUNE_LOG"], "a") as log:
    log.write(opt["-m"] + "\\n")
sys.stderr.write("train: [########] data=0000001/0000001 loss=0.25000+-0.1 acc=90.00% t=00:00:01\\r\\n")
sys.stderr.flush()
time.sleep(float(os.environ.get("FAKE_FINETUNE_S", "0")))
open(opt["-o"], "w").write("trained from " + opt["-m"])
"""


@pytest.fixture
def fake_llama(tmp_path, monkeypatch):
    """A stand-in for llama-finetune and llama-quantize (argv in, files out): the trainer's chain,
    checkpoints and resume without minutes of CPU."""
    import sys

    from orchestration.training.llamacpp import LlamaCppTrainer

    script = tmp_path / "fake-finetune"
    script.write_text(FAKE_FINETUNE.format(python=sys.executable))
    script.chmod(0o755)
    quantize = tmp_path / "fake-quantize"
    quantize.write_text(f"#!{sys.executable}\nimport sys\nopen(sys.argv[-2], 'w').write('f32')\n")
    quantize.chmod(0o755)
    monkeypatch.setenv("FAKE_FINETUNE_LOG", str(tmp_path / "runs.log"))
    (tmp_path / "base.gguf").write_text("q4")
    return LlamaCppTrainer(script, quantize, tmp_path / "work", {"base": tmp_path / "base.gguf"}), tmp_path


async def test_the_llama_cpp_trainer_chains_runs_and_resumes_from_the_last_checkpoint(fake_llama, monkeypatch):
    trainer, tmp = fake_llama
    plan = TrainingPlan(n_epochs=3, batch_size=1, learning_rate=1e-4, seed=1, checkpoint_every=1)
    monkeypatch.setenv("FAKE_FINETUNE_S", "30")  # the second run stays busy until cancelled
    beats: list[TrainProgress] = []
    job_dir = tmp / "work" / "ftjob-r"
    first = asyncio.ensure_future(trainer.train("ftjob-r", "base", b"text", plan, TrainProgress(),
                                                lambda p: beats.append(msgspec.structs.replace(p))))
    await eventually_async(lambda: len((tmp / "runs.log").read_text().splitlines()) >= 1
                           if (tmp / "runs.log").exists() else False, what="the first run")
    assert not first.done()
    first.cancel()  # the first run is killed: no checkpoint yet, nothing to resume from
    with pytest.raises(asyncio.CancelledError):
        await first
    assert trainer.checkpoints("ftjob-r") == [] and beats[0].epochs_done == 0

    monkeypatch.setenv("FAKE_FINETUNE_S", "0")
    done = await trainer.train("ftjob-r", "base", b"text", plan, TrainProgress(), lambda p: None)
    assert done.epochs_done == 3 and done.resumed_from == 0 and done.loss == 0.25
    runs = (tmp / "runs.log").read_text().splitlines()
    assert runs[-3].endswith("bases/base-f32.gguf") and runs[-2].endswith("ckpt-epoch-1.gguf")
    assert [e for e, _ in trainer.checkpoints("ftjob-r")] == [2, 3]  # the last two are kept

    (job_dir / "ckpt-epoch-3.gguf").unlink()  # as if the worker had died during epoch 3
    more = TrainingPlan(n_epochs=4, batch_size=1, learning_rate=1e-4, seed=1, checkpoint_every=1)
    resumed = await trainer.train("ftjob-r", "base", b"text", more, TrainProgress(), lambda p: None)
    assert resumed.resumed_from == 2 and resumed.epochs_done == 4
    assert (tmp / "runs.log").read_text().splitlines()[-2].endswith("ckpt-epoch-2.gguf")
    await trainer.remove("ftjob-r")
    assert not job_dir.exists()
