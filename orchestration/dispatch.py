"""The direct path to the engine (ADR-005's dual path).

The proxy offers a generation to the workers of the model's queue over core NATS (a queue group:
one worker gets each offer). A worker with a free slot answers with its own adoption queue and
calls the engine at once, so the first token does not wait for Temporal's dispatch. The job's
workflow, started alongside, adopts the run with the `adopt` activity on that queue: from then on
the workflow holds the run as it holds any activity (heartbeats, cancellation, its summary). A run
that ends before its adoption keeps its summary here for the adopter.

When the adoption fails (the worker died, or the workflow fell far behind), the workflow takes
over on the model's queue. The takeover first withdraws the run (`sy.withdraw.<job>`, answered by
the worker holding it once it stopped), then continues from the output already delivered: the
two never generate at once.
"""

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass

import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestration.activities import QUIET_STOP, InferenceActivities, heartbeats
from orchestration.offers import DISPATCH_SUBJECT_PREFIX, WITHDRAW_SUBJECT_PREFIX
from orchestration.slots import EngineSlots
from orchestration.telemetry import context_from_headers, measured_attempt, tracer
from schemas.jobs import AdoptInput, Dispatch, DispatchReply, InferenceSummary

UNADOPTED_TTL_S = 900.0  # a run whose workflow never came (its proxy died) is dropped after this
NOT_ADOPTED = "NotAdopted"
_dispatch_decoder = msgspec.json.Decoder(Dispatch)
_encoder = msgspec.json.Encoder()


class DirectRuns:
    """This worker's dispatched runs, from the offer until their adoption."""

    def __init__(self, activities: InferenceActivities, slots: dict[str, EngineSlots]):
        self._activities = activities
        self._slots = slots  # by queue, shared with the Temporal workers of those queues
        self._id = uuid.uuid4().hex[:12]
        self._runs: dict[str, _Pending] = {}  # by job: runs not adopted yet
        self._waiting: Counter[str] = Counter()  # the same, counted by queue

    def adoption_queue(self, queue: str) -> str:
        return f"{queue}.direct.{self._id}"

    async def on_offer(self, msg) -> None:
        queue = msg.subject[len(DISPATCH_SUBJECT_PREFIX) + 1:]
        try:
            offer = _dispatch_decoder.decode(msg.data)
            inp = offer.inference
        except msgspec.DecodeError:
            await msg.respond(_encoder.encode(DispatchReply()))
            return
        pool = self._slots.get(queue)
        # Runs waiting for their workflow count against the engines' slots too: when Temporal falls
        # behind (its workflow tasks are the slower part), new jobs wait in its queue instead, so the
        # record of every job stays within seconds of its stream.
        if (pool is None or inp.job_id in self._runs or self._activities.adapter_for(inp.model) is None
                or self._waiting[queue] >= pool.capacity or not pool.try_take()):
            await msg.respond(_encoder.encode(DispatchReply()))  # full: the job waits in Temporal's queue
            return
        run = asyncio.ensure_future(self._run(offer, queue))
        run.add_done_callback(_retrieve)
        run.add_done_callback(lambda _: pool.give_back())
        deadline = asyncio.get_running_loop().call_later(UNADOPTED_TTL_S, self._stop, inp.job_id)
        self._runs[inp.job_id] = _Pending(run, queue, deadline)
        self._waiting[queue] += 1
        await msg.respond(_encoder.encode(DispatchReply(queue=self.adoption_queue(queue))))

    async def _run(self, offer: Dispatch, queue: str) -> InferenceSummary:
        """The generation, in the request's trace (the adopting activity's spans come later)."""
        with tracer().start_as_current_span(
                "RunDirect:inference", context=context_from_headers(offer.trace),
                attributes={"switchyard.job_id": offer.inference.job_id}):
            return await measured_attempt(self._activities.generate(offer.inference, attempt=1), offer.inference,
                                          queue, 0.0, 1)  # taken at once: no queue wait

    async def on_withdraw(self, msg) -> None:
        """Stops the run (if it is here) without ending the job's stream, and says so once stopped."""
        run = self._take(msg.subject[len(WITHDRAW_SUBJECT_PREFIX) + 1:])
        if run is None:
            return
        run.cancel(QUIET_STOP)
        await asyncio.gather(run, return_exceptions=True)
        if msg.reply:
            await msg.respond(b"stopped")

    def _stop(self, job_id: str) -> None:
        run = self._take(job_id)
        if run is not None:
            run.cancel(QUIET_STOP)

    def _take(self, job_id: str) -> asyncio.Task[InferenceSummary] | None:
        pending = self._runs.pop(job_id, None)
        if pending is None:
            return None
        pending.deadline.cancel()
        self._waiting[pending.queue] -= 1
        return pending.run

    @activity.defn(name="adopt")
    async def adopt(self, inp: AdoptInput) -> InferenceSummary:
        run = self._take(inp.job_id)
        if run is None:
            raise ApplicationError("the dispatched run is not on this worker any more", type=NOT_ADOPTED)
        heartbeat = asyncio.ensure_future(heartbeats(activity.info().heartbeat_timeout))
        try:
            return await asyncio.shield(run)
        except asyncio.CancelledError:
            if not run.done():  # the job was cancelled (the run ends its stream so), or timed out
                details = activity.cancellation_details()
                run.cancel(None if details is not None and details.cancel_requested else QUIET_STOP)
                await asyncio.gather(run, return_exceptions=True)
            raise
        finally:
            heartbeat.cancel()

    def stop_all(self) -> None:
        for job_id in list(self._runs):
            self._stop(job_id)


@dataclass
class _Pending:
    run: asyncio.Task[InferenceSummary]
    queue: str
    deadline: asyncio.TimerHandle  # drops the run if its workflow never comes


def _retrieve(run: asyncio.Task) -> None:
    if not run.cancelled():
        run.exception()  # a run's failure reaches its adopter; an orphan's is dropped here
