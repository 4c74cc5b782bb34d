"""The worker's side of the direct path, with a stand-in generation: offers are taken only while
the engines have a free slot and Temporal keeps up with adopting the runs."""

from __future__ import annotations

import asyncio

import msgspec

from orchestration.dispatch import DirectRuns
from orchestration.slots import EngineSlots
from schemas.jobs import Dispatch, DispatchReply, InferenceInput


class Generations:
    """Stands for InferenceActivities: each generation waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def adapter_for(self, model: str):
        return object() if model == "m" else None

    async def generate(self, inp, attempt: int):
        await self.release.wait()
        return inp.job_id


class Offer:
    def __init__(self, job_id: str, model: str = "m") -> None:
        inp = InferenceInput(job_id=job_id, model=model, endpoint="/v1/chat/completions", body={}, created=1)
        self.subject = "sy.dispatch.gpu.x"
        self.data = msgspec.json.encode(Dispatch(inp))
        self.reply: DispatchReply | None = None

    async def respond(self, data: bytes) -> None:
        self.reply = msgspec.json.decode(data, type=DispatchReply)


async def offer(runs: DirectRuns, job_id: str, model: str = "m") -> str:
    o = Offer(job_id, model)
    await runs.on_offer(o)
    assert o.reply is not None
    return o.reply.queue


async def test_offers_stop_at_the_engines_slots_and_at_runs_awaiting_adoption():
    gens = Generations()
    slots = EngineSlots(2, asyncio.get_running_loop())
    runs = DirectRuns(gens, {"gpu.x": slots})
    assert await offer(runs, "a") == runs.adoption_queue("gpu.x")
    assert await offer(runs, "b")
    assert await offer(runs, "c") == ""  # both slots busy: the job goes to Temporal's queue
    assert await offer(runs, "z", model="other") == ""  # a model this worker does not serve
    gens.release.set()
    await asyncio.sleep(0.01)
    assert slots.in_use == 0
    # The engines are free, but two finished runs still wait for their workflows: no more offers.
    assert await offer(runs, "d") == ""
    runs._take("a")  # adopted
    assert await offer(runs, "e")
    assert await asyncio.gather(runs._take("b"), runs._take("e")) == ["b", "e"]  # handed to their adopters
