"""A pipeline model's job: its first stage takes the request; each later stage is a chat on the
previous stage's text, run as its own activity on its own model's queue (ADR-003)."""

from __future__ import annotations

import msgspec

from orchestration.model_registry import CatalogView
from proxy.jobs.prepare import PreparedJob
from schemas.catalog import Catalog, ModelEntry
from schemas.jobs import CHAT_ENDPOINT, InferenceInput, PipelineStep


def stage_models(catalog: Catalog | CatalogView, model: ModelEntry) -> list[ModelEntry]:
    """The models a pipeline's stages run on (the catalog checked they exist when it was loaded)."""
    found = [catalog.get(stage.model) for stage in model.pipeline]
    assert all(m is not None for m in found)
    return found  # type: ignore[return-value]


def as_pipeline(catalog: Catalog | CatalogView, job: PreparedJob) -> PreparedJob:
    """The prepared job of a pipeline model, its workflow input spelling out every stage."""
    model = job.model
    if not model.pipeline:
        return job
    models = stage_models(catalog, model)
    last = len(model.pipeline) - 1
    first = msgspec.structs.replace(job.inp.inference, model=models[0].id, stage=model.pipeline[0].name,
                                    stage_index=0, final=last == 0)
    steps = []
    for i, (stage, target) in enumerate(zip(model.pipeline, models)):
        if i == 0:
            continue
        messages = [{"role": "system", "content": stage.system}] if stage.system else []
        messages.append({"role": "user", "content": stage.user})
        inference = InferenceInput(
            job_id=first.job_id, model=target.id, endpoint=CHAT_ENDPOINT, created=first.created,
            body={"messages": messages, "max_tokens": min(stage.max_tokens, target.limits.max_tokens)},
            options={"store_text": True}, tenant=first.tenant, stage=stage.name, stage_index=i, final=i == last,
            retention_s=first.retention_s)
        steps.append(PipelineStep(inference=inference, task_queue=target.task_queue, timeouts=target.timeouts,
                                  retry=target.retry))
    inp = msgspec.structs.replace(job.inp, inference=first, task_queue=models[0].task_queue,
                                  timeouts=models[0].timeouts, retry=models[0].retry, then=tuple(steps))
    memo = msgspec.structs.replace(job.memo, stages=[s.name for s in model.pipeline])
    return msgspec.structs.replace(job, inp=inp, memo=memo)
