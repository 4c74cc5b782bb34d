"""A fake external training service speaking the ExternalTrainer protocol
(orchestration/training/external.py): each status poll advances a job by one epoch."""

from __future__ import annotations

import base64

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.server import LoopbackServer


class FakeTrainer(LoopbackServer):
    def __init__(self, fail_at_epoch: int = 0) -> None:
        self.jobs: dict[str, dict] = {}
        self.cancelled: list[str] = []
        self.fail_at_epoch = fail_at_epoch
        self.app = Starlette(routes=[
            Route("/jobs", self.submit, methods=["POST"]),
            Route("/jobs/{id}", self.status, methods=["GET"]),
            Route("/jobs/{id}/cancel", self.cancel, methods=["POST"]),
        ])

    async def submit(self, request: Request) -> JSONResponse:
        body = await request.json()
        remote = "ext-" + body["job_id"]
        if remote not in self.jobs:  # a retried submit finds its job
            start = int(body["resume_from"].rsplit("-", 1)[1]) if body["resume_from"] else 0
            self.jobs[remote] = {"status": "running", "epochs_done": start, "n_epochs": body["n_epochs"],
                                 "text": base64.b64decode(body["training_text"]), "resumed_from": start}
        return JSONResponse({"id": remote})

    async def status(self, request: Request) -> JSONResponse:
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            return JSONResponse({"error": "no such job"}, status_code=404)
        if job["status"] == "running":
            job["epochs_done"] += 1
            if self.fail_at_epoch and job["epochs_done"] >= self.fail_at_epoch:
                job["status"], job["error"] = "failed", "out of GPU memory"
            elif job["epochs_done"] >= job["n_epochs"]:
                job["status"] = "succeeded"
        done = job["epochs_done"]
        return JSONResponse({"status": job["status"], "epochs_done": done, "checkpoint": f"s3://ckpt/epoch-{done}",
                             "loss": 1.0 / done, "error": job.get("error", ""),
                             "model_path": "s3://models/final" if job["status"] == "succeeded" else ""})

    async def cancel(self, request: Request) -> JSONResponse:
        remote = request.path_params["id"]
        self.cancelled.append(remote)
        if remote in self.jobs:
            self.jobs[remote]["status"] = "cancelled"
        return JSONResponse({"id": remote, "status": "cancelled"})
