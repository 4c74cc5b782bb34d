"""The job workflow's branches on a real Temporal dev server, its activities mocked under their real
names: what each branch hands the activities (terminal notices, settlements, webhooks, takeovers) and
how the job ends. Each run's history is replayed, and pinned in tests/histories
(SWITCHYARD_RECORD_HISTORY=1 rewrites them); every pinned history must replay against today's code."""

from __future__ import annotations

import uuid
from datetime import timedelta

import msgspec
import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Replayer

from adapters.base import EngineError
from orchestration.activities import InferenceActivities, engine_failure
from orchestration.converter import data_converter
from orchestration.workflows import InferenceWorkflow
from schemas.events import JOB_CANCELLED, JOB_FAILED, JOB_SUCCEEDED
from schemas.jobs import (
    CHAT_ENDPOINT,
    INFERENCE_WORKFLOW,
    NO_CAPACITY,
    InferenceInput,
    InferenceSummary,
    PipelineStep,
    RetrySpec,
    SettlementRequest,
    StageTimeouts,
    TerminalNotice,
    WorkflowInput,
)
from schemas.openai import ErrorBody
from switchyard.processes import free_port, start_temporal
from tests.eventually import eventually_async
from tests.workflow_mocks import (
    HISTORIES,
    WORKFLOWS,
    MockActivities,
    Queues,
    pin,
    silent,
    summary,
    until_cancelled,
    workers_for,
)

ADMISSION = {"tenant": "acme", "reserved": 40}
HOOK = "https://hooks.example.com/jobs"
FAST_RETRY = RetrySpec(initial_interval_s=0.1, maximum_interval_s=0.2, maximum_attempts=3)
TIMEOUTS = StageTimeouts(schedule_to_start_s=30, start_to_close_s=60, heartbeat_s=2)


@pytest.fixture(scope="module")
def temporal_address(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    server = start_temporal(port, None, tmp_path_factory.mktemp("temporal-branches"))
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
async def wf_client(temporal_address: str) -> Client:
    async def connect() -> Client | None:
        try:
            return await Client.connect(temporal_address, data_converter=data_converter)
        except RuntimeError:  # the port is open before the frontend is healthy
            return None

    return await eventually_async(connect, 60, interval=0.5, what="Temporal's frontend answering")


def job_input(q: Queues, **changes) -> WorkflowInput:
    inference = InferenceInput(job_id=f"chatcmpl-{uuid.uuid4().hex[:12]}", model="m", endpoint=CHAT_ENDPOINT,
                               body={"messages": [{"role": "user", "content": "hi"}]}, created=1700000000)
    inp = WorkflowInput(inference=inference, task_queue=q.engine, timeouts=TIMEOUTS, retry=FAST_RETRY,
                        webhook_url=HOOK, webhook_queue=q.workflows, admission=ADMISSION, prompt_estimate=7)
    return msgspec.structs.replace(inp, **changes)


async def start(client: Client, q: Queues, inp: WorkflowInput):
    return await client.start_workflow(InferenceWorkflow.run, inp, id=inp.inference.job_id, task_queue=q.workflows)


async def webhook_of(client: Client, job_id: str, mocks: MockActivities) -> int:
    """The job's webhook workflow's result; the parent does not wait for it."""
    handle = client.get_workflow_handle(f"{job_id}-webhook", result_type=int)
    status = await handle.result()
    assert mocks.deliveries, "the webhook workflow ended without a delivery"
    return status


def settled(inp: WorkflowInput, actual: int | None) -> SettlementRequest:
    return SettlementRequest(job_id=inp.inference.job_id, admission=ADMISSION, actual_tokens=actual,
                             prompt_estimate=7)


async def test_success_settles_the_tokens_used_and_notifies(wf_client: Client):
    mocks = MockActivities()
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q)
        handle = await start(wf_client, q, inp)
        assert await handle.result() == summary()
        assert await webhook_of(wf_client, inp.inference.job_id, mocks) == 200
        await pin(handle, "inference_succeeded")
    [call] = mocks.inferences
    assert call.input == inp.inference and call.task_queue == q.engine and call.attempt == 1
    assert mocks.terminals == []  # the activity ended the stream itself
    assert mocks.settlements == [settled(inp, 5)]
    delivery = mocks.deliveries[0].input
    assert delivery.event_type == JOB_SUCCEEDED and delivery.url == HOOK
    assert delivery.data == {"id": inp.inference.job_id, "object": "job", "model": "m", "status": "succeeded",
                             "result_url": f"/v1/jobs/{inp.inference.job_id}/result", "finish_reason": "stop",
                             "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}


async def test_engine_failure_ends_the_stream_with_the_engines_error(wf_client: Client):
    async def refuses(inp, attempt):
        raise engine_failure(EngineError("prompt too long", status=400, retryable=False,
                                         type="invalid_request_error", code="context_length_exceeded",
                                         param="messages"))

    mocks = MockActivities(inference=refuses)
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q)
        handle = await start(wf_client, q, inp)
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        await webhook_of(wf_client, inp.inference.job_id, mocks)
        await pin(handle, "inference_engine_failed")
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "JobFailed" and cause.non_retryable
    assert cause.message == "prompt too long" and list(cause.details) == [400, "context_length_exceeded"]
    assert len(mocks.inferences) == 1  # not retried
    error = ErrorBody(message="prompt too long", type="invalid_request_error", param="messages",
                      code="context_length_exceeded")
    assert mocks.terminals == [TerminalNotice(job_id=inp.inference.job_id, kind="failed", status=400, error=error)]
    assert mocks.settlements == [settled(inp, None)]  # worked out from the events delivered
    delivery = mocks.deliveries[0].input
    assert delivery.event_type == JOB_FAILED
    assert delivery.data["status"] == "failed" and delivery.data["error"]["code"] == "context_length_exceeded"


async def test_a_retryable_failure_is_retried_until_an_attempt_succeeds(wf_client: Client):
    async def busy_twice(inp, attempt):
        if attempt < 3:
            raise engine_failure(EngineError("engine busy", status=503, retryable=True))
        return summary(attempt)

    mocks = MockActivities(inference=busy_twice)
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q, webhook_url="")
        handle = await start(wf_client, q, inp)
        result = await handle.result()
        await pin(handle, "inference_retried_then_succeeded")
    assert result.attempt == 3
    assert [c.attempt for c in mocks.inferences] == [1, 2, 3]
    assert all(c.input == inp.inference for c in mocks.inferences)
    assert mocks.terminals == [] and mocks.settlements == [settled(inp, 5)] and mocks.deliveries == []


async def test_retries_exhausted_fail_the_job_with_the_last_error(wf_client: Client):
    async def always_busy(inp, attempt):
        raise engine_failure(EngineError("engine busy", status=503, retryable=True, code="overloaded"))

    mocks = MockActivities(inference=always_busy)
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q, webhook_url="")
        handle = await start(wf_client, q, inp)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert [c.attempt for c in mocks.inferences] == [1, 2, 3]
    [notice] = mocks.terminals
    assert notice.status == 503 and notice.error is not None and notice.error.code == "overloaded"


async def test_cancel_while_the_engine_runs_stops_it_and_ends_the_job(wf_client: Client):
    mocks = MockActivities(inference=until_cancelled)
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q)
        handle = await start(wf_client, q, inp)
        await eventually_async(mocks.inference_started.is_set, what="the engine call started")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        await webhook_of(wf_client, inp.inference.job_id, mocks)
        await eventually_async(lambda: mocks.cancelled == ["inference"], what="the engine call saw the cancel")
        await pin(handle, "inference_cancelled_running")
    assert isinstance(failed.value.cause, CancelledError)
    assert mocks.terminals == [TerminalNotice(job_id=inp.inference.job_id, kind="cancelled")]
    assert mocks.settlements == [settled(inp, None)]
    delivery = mocks.deliveries[0].input
    assert delivery.event_type == JOB_CANCELLED and delivery.data["status"] == "cancelled"


async def test_cancel_while_queued_never_reaches_an_engine(wf_client: Client):
    mocks = MockActivities()
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q, task_queue=f"unpolled-{uuid.uuid4().hex[:8]}")
        handle = await start(wf_client, q, inp)

        async def scheduled():
            return (await handle.describe()).raw_description.pending_activities

        await eventually_async(scheduled, what="the inference activity is scheduled")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        await webhook_of(wf_client, inp.inference.job_id, mocks)
        await pin(handle, "inference_cancelled_queued")
    assert isinstance(failed.value.cause, CancelledError)
    assert mocks.inferences == []
    assert mocks.terminals == [TerminalNotice(job_id=inp.inference.job_id, kind="cancelled")]
    assert mocks.settlements == [settled(inp, None)]
    assert mocks.deliveries[0].input.event_type == JOB_CANCELLED


async def test_no_worker_in_time_fails_the_job_as_no_capacity(wf_client: Client):
    mocks = MockActivities()
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q, task_queue=f"unpolled-{uuid.uuid4().hex[:8]}", webhook_url="",
                        timeouts=StageTimeouts(schedule_to_start_s=1, start_to_close_s=60, heartbeat_s=2))
        handle = await start(wf_client, q, inp)
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        await pin(handle, "inference_no_capacity")
    assert isinstance(failed.value.cause, ApplicationError) and failed.value.cause.message == NO_CAPACITY
    error = ErrorBody(message=NO_CAPACITY, type="server_error", code="no_capacity")
    assert mocks.terminals == [TerminalNotice(job_id=inp.inference.job_id, kind="failed", status=503, error=error)]


async def test_a_pipeline_hands_each_stage_the_previous_result(wf_client: Client):
    async def staged(inp, attempt):
        return summary(attempt, total_tokens=4 + inp.stage_index, result_ref=f"{inp.job_id}/result.{inp.stage}")

    mocks = MockActivities(inference=staged)
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q, webhook_url="")
        first = msgspec.structs.replace(inp.inference, stage="transcribe", final=False)
        second = msgspec.structs.replace(inp.inference, stage="summarise", stage_index=1, model="m2",
                                         options={"store_text": True})
        inp = msgspec.structs.replace(inp, inference=first,
                                      then=(PipelineStep(second, q.engine, TIMEOUTS, FAST_RETRY),))
        handle = await start(wf_client, q, inp)
        result = await handle.result()
        memo = await (await handle.describe()).memo()
        await pin(handle, "pipeline_two_stages")
    assert [c.input.stage for c in mocks.inferences] == ["transcribe", "summarise"]
    assert mocks.inferences[0].input == first
    context = f"{first.job_id}/result.transcribe"
    assert mocks.inferences[1].input == msgspec.structs.replace(
        second, options={"store_text": True, "context_ref": context})
    assert result.result_ref == f"{first.job_id}/result.summarise"
    assert mocks.settlements == [settled(inp, 5)]  # the last stage's usage
    assert memo == {"stage": "summarise"}


async def test_an_adopted_dispatched_run_is_the_jobs_result(wf_client: Client):
    mocks = MockActivities()
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q, webhook_url="", dispatched_to=q.direct)
        handle = await start(wf_client, q, inp)
        assert await handle.result() == summary()
        await pin(handle, "dispatched_adopted")
    [adoption] = mocks.adoptions
    assert adoption.input.job_id == inp.inference.job_id and adoption.task_queue == q.direct
    assert adoption.max_attempts == 1
    assert mocks.inferences == []


async def _not_adopted(inp, attempt):
    raise ApplicationError("the dispatched run is not on this worker any more", type="NotAdopted")


@pytest.mark.parametrize("adopt, withdraw, name", [
    (silent, True, "dispatched_adoption_lost"),  # its worker died: the run may live on, withdraw it
    (_not_adopted, False, "dispatched_not_adopted"),  # the run is over: nothing to withdraw
], ids=["lost", "not-adopted"])
async def test_a_failed_adoption_is_taken_over_on_the_models_queue(wf_client: Client, adopt, withdraw, name):
    mocks = MockActivities(adopt=adopt)
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q, webhook_url="", dispatched_to=q.direct,
                        timeouts=StageTimeouts(schedule_to_start_s=30, start_to_close_s=60, heartbeat_s=1))
        handle = await start(wf_client, q, inp)
        result = await handle.result()
        await pin(handle, name)
    assert len(mocks.adoptions) == 1
    [takeover] = mocks.inferences
    assert takeover.task_queue == q.engine
    assert takeover.input == msgspec.structs.replace(inp.inference, continuing=True, withdraw=withdraw)
    assert takeover.max_attempts == 2  # the dispatched run was the first of the catalog's three
    assert result == summary()
    assert mocks.terminals == [] and mocks.settlements == [settled(inp, 5)]


async def test_a_dispatched_run_that_failed_for_good_is_not_taken_over(wf_client: Client):
    async def refused(inp, attempt):
        raise engine_failure(EngineError("bad request", status=400, retryable=False))

    mocks = MockActivities(adopt=refused)
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q, webhook_url="", dispatched_to=q.direct)
        handle = await start(wf_client, q, inp)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert mocks.inferences == []
    assert [(n.kind, n.status) for n in mocks.terminals] == [("failed", 400)]


async def test_a_failing_webhook_delivery_is_retried_until_it_lands(wf_client: Client):
    async def refused_twice(d, attempt):
        if attempt < 3:
            raise ApplicationError("the receiver answered 503", type="WebhookFailed",
                                   next_retry_delay=timedelta(milliseconds=100))
        return 204

    mocks = MockActivities(deliver=refused_twice)
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q)
        await (await start(wf_client, q, inp)).result()
        assert await webhook_of(wf_client, inp.inference.job_id, mocks) == 204
        await pin(wf_client.get_workflow_handle(f"{inp.inference.job_id}-webhook"), "webhook_retried")
    assert [c.attempt for c in mocks.deliveries] == [1, 2, 3]
    assert all(c.task_queue == q.workflows for c in mocks.deliveries)
    assert {c.input.event_type for c in mocks.deliveries} == {JOB_SUCCEEDED}


async def test_a_gone_webhook_receiver_stops_the_retries(wf_client: Client):
    async def gone(d, attempt):
        raise ApplicationError("the receiver answered 410 Gone; delivery stops", type="WebhookGone",
                               non_retryable=True)

    mocks = MockActivities(deliver=gone)
    async with workers_for(wf_client, mocks) as q:
        inp = job_input(q)
        await (await start(wf_client, q, inp)).result()
        with pytest.raises(WorkflowFailureError):
            await webhook_of(wf_client, inp.inference.job_id, mocks)
    assert len(mocks.deliveries) == 1


PINNED = ["inference_succeeded", "inference_engine_failed", "inference_retried_then_succeeded",
          "inference_cancelled_running", "inference_cancelled_queued", "inference_no_capacity",
          "pipeline_two_stages", "dispatched_adopted", "dispatched_adoption_lost", "dispatched_not_adopted",
          "webhook_retried"]


async def test_pinned_histories_replay():
    """Every history in tests/histories replays against today's workflows: a change that reorders or
    drops their commands (non-determinism) fails here before it strands running jobs."""
    paths = sorted(HISTORIES.glob("*.json"))
    assert set(PINNED) <= {p.stem for p in paths}
    replayer = Replayer(workflows=WORKFLOWS, data_converter=data_converter)
    for path in paths:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


async def test_replay_catches_a_changed_workflow():
    """The replay has teeth: a workflow that runs other commands than a pinned history holds fails it."""
    history = WorkflowHistory.from_json("x", (HISTORIES / "inference_succeeded.json").read_text())
    replayer = Replayer(workflows=[ChangedInferenceWorkflow], data_converter=data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None


@workflow.defn(name=INFERENCE_WORKFLOW, sandboxed=False)
class ChangedInferenceWorkflow:
    """Today's workflow with a timer added before the engine call."""

    @workflow.run
    async def run(self, inp: WorkflowInput) -> InferenceSummary:
        await workflow.sleep(1)
        return await workflow.execute_activity_method(InferenceActivities.inference, inp.inference,
                                                      start_to_close_timeout=timedelta(seconds=5))
