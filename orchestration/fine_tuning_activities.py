"""The fine-tuning saga's activities: record a step, collect the data, train, start/verify/stop the
candidate engine, remove the artifacts. Recording and collecting run on the `cpu` queue; the rest
on the `train` queue, on the machine whose disk holds the checkpoints."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestration.fine_tuning_store import FineTuningStore, checkpoint_id
from orchestration.objectstore import ObjectNotFound, ObjectStore, check_key
from orchestration.training.candidate import CandidateEngines
from orchestration.training.config import TrainingConfig
from orchestration.training.data import UploadedFile, render_dataset
from orchestration.training.protocols import DataError, DataSource, Example, Trainer, Verifier
from orchestration.training.verifier import HeldOutCases
from schemas.catalog import ModelEntry
from schemas.errors import NotFound
from schemas.fine_tuning import (
    Candidate,
    CandidateInput,
    CheckpointMetrics,
    Dataset,
    DatasetInput,
    FineTuningJobCheckpoint,
    JobRef,
    JobUpdate,
    TrainInput,
    TrainProgress,
    TrainResult,
    VerifyInput,
    VerifyReport,
)

BAD_DATA = "InvalidTrainingData"
MIN_TRAIN_CHARS = 2300  # about 640 tokens: three windows of llama-finetune's 256-token context
_examples = msgspec.json.Decoder(list[Example])


def _bad_data(code: str, message: str, param: str) -> ApplicationError:
    return ApplicationError(message, {"code": code, "param": param}, type=BAD_DATA, non_retryable=True)


class FineTuningActivities:
    def __init__(self, store: FineTuningStore, objects: ObjectStore, files: Any, lookup: Callable[[str], ModelEntry | None],
                 trainer: Trainer, config: TrainingConfig, verifier: Verifier | None = None):
        self.store = store
        self.objects = objects
        self.files = files  # orchestration.files.FileStore
        self.lookup = lookup
        self.trainer = trainer
        self.config = config
        self.verifier = verifier or HeldOutCases()
        self.engines = CandidateEngines(config.bin_dir / "llama-server", threads=config.threads)

    @activity.defn(name="fine_tuning.record")
    async def record(self, update: JobUpdate) -> None:
        await self.store.apply(update)

    @activity.defn(name="fine_tuning.collect")
    async def collect(self, inp: DatasetInput) -> Dataset:
        training = await self._file(inp.tenant, inp.training_file, "training_file")
        validation = (await self._file(inp.tenant, inp.validation_file, "validation_file")
                      if inp.validation_file else None)
        source: DataSource = UploadedFile(training, validation)
        try:
            prepared = await source.collect()
        except DataError as exc:
            raise _bad_data(f"invalid_{exc.param}", f"Invalid {exc.param}: {exc}", exc.param) from None
        text = render_dataset(prepared.train, MIN_TRAIN_CHARS)
        train_ref = await self.objects.put(check_key(f"{inp.job_id}/train.txt"), text, "text/plain")
        cases_ref = await self.objects.put(check_key(f"{inp.job_id}/cases.json"),
                                           msgspec.json.encode(prepared.held_out))
        chars = sum(len(m["content"]) for e in prepared.train for m in e.messages)
        return Dataset(train_ref=train_ref, cases_ref=cases_ref, examples=len(prepared.train),
                       held_out=len(prepared.held_out), estimated_tokens=max(1, chars // 4))

    async def _file(self, tenant: str, file_id: str, param: str) -> bytes:
        try:
            meta = await self.files.get(tenant, file_id)
            if meta.purpose != "fine-tune":
                raise _bad_data(f"invalid_{param}", f"File {file_id} has purpose '{meta.purpose}'; "
                                "upload it with purpose 'fine-tune'.", param)
            return await self.files.read_all(tenant, file_id)
        except NotFound:
            raise _bad_data(f"invalid_{param}", f"File {file_id} does not exist.", param) from None

    @activity.defn(name="fine_tuning.train")
    async def train(self, inp: TrainInput) -> TrainResult:
        info = activity.info()
        progress = TrainProgress()
        if info.heartbeat_details:
            progress = msgspec.convert(info.heartbeat_details[0], TrainProgress)
        try:
            text = await self.objects.get(inp.train_ref)
        except ObjectNotFound:
            raise ApplicationError("the prepared training text is gone", type="TrainingDataGone",
                                   non_retryable=True) from None
        tenant = inp.tenant
        reported = {"epochs": progress.epochs_done}
        pending: list[asyncio.Future] = []

        def beat(state: TrainProgress) -> None:
            activity.heartbeat(state)
            if state.resumed_from and reported.get("resumed") is None:
                reported["resumed"] = state.resumed_from
                pending.append(asyncio.ensure_future(self._event(
                    inp.job_id, tenant, f"resume-{info.attempt}",
                    f"Resumed from the checkpoint after epoch {state.resumed_from} (attempt {info.attempt})",
                    {"resumed_from_epoch": state.resumed_from, "attempt": info.attempt})))
            if state.checkpoint and state.epochs_done > reported["epochs"]:
                reported["epochs"] = state.epochs_done
                ckpt = FineTuningJobCheckpoint(
                    id=checkpoint_id(inp.job_id, state.epochs_done), created_at=int(time.time()),
                    fine_tuned_model_checkpoint=f"{inp.job_id}:ckpt-step-{state.epochs_done}",
                    fine_tuning_job_id=inp.job_id, step_number=state.epochs_done,
                    metrics=CheckpointMetrics(step=float(state.epochs_done), train_loss=state.loss))
                pending.append(asyncio.ensure_future(self._event(
                    inp.job_id, tenant, f"ckpt-{state.epochs_done}",
                    f"Checkpoint saved after epoch {state.epochs_done}/{inp.plan.n_epochs}"
                    + (f", train loss {state.loss:.4f}" if state.loss is not None else ""),
                    {"step": state.epochs_done, "train_loss": state.loss}, ckpt)))

        try:
            final = await self.trainer.train(inp.job_id, inp.model, text, inp.plan, progress, beat)
        finally:
            await asyncio.gather(*pending, return_exceptions=True)
        return TrainResult(model_path=final.checkpoint, epochs=final.epochs_done, resumed_from=final.resumed_from)

    async def _event(self, job_id: str, tenant: str, key: str, message: str, data: dict,
                     checkpoint: FineTuningJobCheckpoint | None = None) -> None:
        await self.store.apply(JobUpdate(job_id=job_id, tenant=tenant, seq=0, event_key=key,
                                         at=int(time.time()), message=message, type="metrics" if checkpoint else "message",
                                         data=data, checkpoint=checkpoint))

    @activity.defn(name="fine_tuning.start_candidate")
    async def start_candidate(self, inp: CandidateInput) -> Candidate:
        log = self.config.work_dir / inp.job_id / "candidate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        served = f"candidate-{inp.job_id}"
        url, pid = await self.engines.start(inp.model_path, served, log)
        return Candidate(job_id=inp.job_id, url=url, pid=pid, served_name=served, model_path=inp.model_path)

    @activity.defn(name="fine_tuning.verify")
    async def verify(self, inp: VerifyInput) -> VerifyReport:
        cases = _examples.decode(await self.objects.get(inp.cases_ref))
        base_entry = self.lookup(inp.base_model)
        base = None
        if base_entry is not None and base_entry.engine is not None and base_entry.engine.kind == "openai":
            base = _chat(base_entry.engine.url, base_entry.engine.served_name or base_entry.id)
        return await self.verifier.verify(cases, _chat(inp.candidate.url, inp.candidate.served_name), base, inp.spec)

    @activity.defn(name="fine_tuning.stop_candidate")
    async def stop_candidate(self, candidate: Candidate) -> bool:
        return await self.engines.stop(candidate.pid, candidate.model_path)

    @activity.defn(name="fine_tuning.remove_artifacts")
    async def remove_artifacts(self, inp: JobRef) -> None:
        await self.trainer.remove(inp.job_id)
        for name in ("train.txt", "cases.json"):
            await self.objects.delete(f"{inp.job_id}/{name}")

    def cpu_activities(self) -> list:
        return [self.record, self.collect]

    def train_activities(self) -> list:
        return [self.train, self.start_candidate, self.verify, self.stop_candidate, self.remove_artifacts]


def _chat(base_url: str, model: str):
    async def generate(messages: list[dict[str, str]], max_tokens: int) -> str:
        async with httpx.AsyncClient(timeout=120) as client:
            r = await client.post(base_url.rstrip("/") + "/chat/completions", json={
                "model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens})
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"] or ""

    return generate


async def open_fine_tuning(js: Any, objects: ObjectStore, lookup: Callable[[str], ModelEntry | None],
                           replicas: int = 1, config: TrainingConfig | None = None) -> FineTuningActivities:
    """The activities with their stores opened and the trainer the environment names."""
    from orchestration.files import FileStore

    config = config or TrainingConfig.from_env()
    store = await FineTuningStore.open(js, replicas)
    files = await FileStore.open(js, objects, replicas)
    return FineTuningActivities(store, objects, files, lookup, config.build_trainer(), config)
