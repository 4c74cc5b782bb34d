"""Trainer `ExternalTrainer`: a training service elsewhere (a GPU cluster), over HTTP.

Protocol: `POST {url}/jobs` with {"job_id", "base_model", "training_text" (base64), "n_epochs",
"learning_rate", "batch_size", "seed", "resume_from"} answers {"id"}; `GET {url}/jobs/{id}` answers
{"status": "running"|"succeeded"|"failed", "epochs_done", "checkpoint", "loss", "model_path",
"error"}; `POST {url}/jobs/{id}/cancel` stops it. Submitting is idempotent per `job_id` (a retried
attempt finds the job it started), and `resume_from` names the checkpoint a resumed attempt starts
from."""

from __future__ import annotations

import asyncio
import base64

import httpx
import msgspec

from orchestration.training.protocols import Heartbeat
from schemas.fine_tuning import TrainingPlan, TrainProgress


class ExternalTrainerError(RuntimeError):
    pass


class _Status(msgspec.Struct):
    status: str
    epochs_done: int = 0
    checkpoint: str = ""
    loss: float | None = None
    model_path: str = ""
    error: str = ""


class ExternalTrainer:
    def __init__(self, url: str, poll_s: float = 1.0, headers: dict[str, str] | None = None):
        self.url = url.rstrip("/")
        self.poll_s = poll_s
        self.headers = headers or {}

    async def train(self, job_id: str, base_model: str, text: bytes, plan: TrainingPlan,
                    progress: TrainProgress, heartbeat: Heartbeat) -> TrainProgress:
        async with httpx.AsyncClient(timeout=30, headers=self.headers) as client:
            r = await client.post(f"{self.url}/jobs", json={
                "job_id": job_id, "base_model": base_model, "training_text": base64.b64encode(text).decode(),
                "n_epochs": plan.n_epochs, "learning_rate": plan.learning_rate,
                "batch_size": plan.batch_size, "seed": plan.seed, "resume_from": progress.checkpoint})
            r.raise_for_status()
            remote = r.json()["id"]
            state = TrainProgress(epochs_done=progress.epochs_done, checkpoint=progress.checkpoint,
                                  resumed_from=progress.epochs_done)
            try:
                while True:
                    r = await client.get(f"{self.url}/jobs/{remote}")
                    r.raise_for_status()
                    s = msgspec.convert(r.json(), _Status)
                    state = msgspec.structs.replace(state, epochs_done=s.epochs_done,
                                                    checkpoint=s.checkpoint or state.checkpoint, loss=s.loss)
                    heartbeat(state)
                    if s.status == "succeeded":
                        return msgspec.structs.replace(state, checkpoint=s.model_path or state.checkpoint)
                    if s.status in ("failed", "cancelled"):
                        raise ExternalTrainerError(s.error or f"the external trainer says {s.status}")
                    await asyncio.sleep(self.poll_s)
            except asyncio.CancelledError:
                await asyncio.shield(_cancel(client, f"{self.url}/jobs/{remote}/cancel"))
                raise

    async def remove(self, job_id: str) -> None:
        """The service keeps its own artifacts; nothing here to remove."""


async def _cancel(client: httpx.AsyncClient, url: str) -> None:
    try:
        await client.post(url)
    except httpx.HTTPError:
        pass
