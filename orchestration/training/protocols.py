"""The saga's strategies, one interface per stage (the Deployer is orchestration.deployers')."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from schemas.fine_tuning import TrainingPlan, TrainProgress, VerificationSpec, VerifyReport


class Example(msgspec.Struct, frozen=True):
    """One chat of the dataset: its messages, the last one the assistant's answer."""

    line: int
    messages: list[dict[str, str]]

    @property
    def prompt(self) -> list[dict[str, str]]:
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


class DataError(ValueError):
    """Bad training data; the message names the first bad line."""

    def __init__(self, message: str, param: str = "training_file"):
        super().__init__(message)
        self.param = param


class Prepared(msgspec.Struct, frozen=True):
    train: list[Example]
    held_out: list[Example]


class DataSource(Protocol):
    async def collect(self) -> Prepared:
        """The validated examples, split into those to train on and those held out for
        verification; raises DataError naming the first bad line."""
        ...


Heartbeat = Callable[[TrainProgress], None]


class Trainer(Protocol):
    async def train(self, job_id: str, base_model: str, text: bytes, plan: TrainingPlan,
                    progress: TrainProgress, heartbeat: Heartbeat) -> TrainProgress:
        """Trains from `progress` (a checkpoint of an earlier attempt, or nothing) to the plan's
        epochs, calling `heartbeat` with each checkpoint; returns the final progress, whose
        `checkpoint` is the trained model."""
        ...

    async def remove(self, job_id: str) -> None:
        """Deletes the job's artifacts (the saga's compensation)."""
        ...


class Generate(Protocol):
    def __call__(self, messages: list[dict[str, str]], max_tokens: int) -> Awaitable[str]: ...


class Verifier(Protocol):
    async def verify(self, cases: list[Example], candidate: Generate, base: Generate | None,
                     spec: VerificationSpec) -> VerifyReport:
        ...
