"""Switchyard's own resources and response bodies, beside OpenAI's (schemas/openai.py): the job, the
jobs list, health and readiness, the admin lists."""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

from schemas.openai import ErrorBody, Usage


class JobView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "job"
    endpoint: str
    model: str
    status: str  # queued | running | succeeded | failed | cancelled
    stage: str  # queued | inference (a pipeline: the running stage's name) | done
    created_at: int
    started_at: Union[int, None] = None
    finished_at: Union[int, None] = None
    attempts: int = 0
    tokens: int = 0
    usage: Union[Usage, None] = None
    finish_reason: Union[str, None] = None
    error: Union[ErrorBody, None] = None
    last_event_id: int = 0
    pii: dict[str, int] = {}
    metadata: dict[str, str] = {}
    stages: list[str] = []
    result_url: str
    events_url: str

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class JobList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[JobView]
    has_more: bool
    first_id: Union[str, None]
    last_id: Union[str, None]


class Health(msgspec.Struct):
    status: Literal["ok"]


class Readiness(msgspec.Struct):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]
    failed: list[str]


class AdminList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


class Webhook(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    secret: str


class JobCreate(msgspec.Struct):
    endpoint: str
    body: dict[str, Any]
    metadata: dict[str, str] = {}
    webhook: Webhook | None = None
