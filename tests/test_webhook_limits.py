"""What a webhook receiver can do to a worker: a gzip bomb or a never-ending answer costs it neither
memory nor more than one try's deadline; and which addresses a webhook may never reach."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from orchestration.delivery import WebhookActivities
from orchestration.webhooks import _public
from schemas.jobs import WebhookDelivery
from tests.eventually import eventually_async
from tests.fakes.receiver import Receiver, gzip_bomb
from tests.jobclient import wait_finished
from tests.test_webhooks import SECRET, create, wait_deliveries

DEADLINE_S = 1.5  # the unit tests' per-try deadline
MIB = 1 << 20


def peak_rss(pid: int | str = "self") -> int:
    """VmHWM, the most resident memory the process has held since `reset_peak_rss`: a body held and
    freed again still shows."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def reset_peak_rss(pid: int | str = "self") -> int:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak becomes the current RSS
    return peak_rss(pid)


class RawReceiver:
    """A loopback HTTP/1.1 server answering bytes no framework would send; the path picks them."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.hung_up = asyncio.Event()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        path = head.split(b" ")[1].decode()
        self.paths.append(path)
        try:
            if path.startswith("/bomb/"):  # /bomb/<status>
                writer.write(f"HTTP/1.1 {path[6:]} X\r\ncontent-encoding: gzip\r\nconnection: close\r\n\r\n".encode())
                async for chunk in gzip_bomb(512):
                    writer.write(chunk)
                    await writer.drain()
            elif path == "/huge":  # 512 MiB, not encoded
                writer.write(b"HTTP/1.1 500 X\r\nconnection: close\r\n\r\n")
                for _ in range(512):
                    writer.write(b"x" * MIB)
                    await writer.drain()
            elif path == "/trickle-headers":
                writer.write(b"HTTP/1.1 200 OK\r\n")
                while True:
                    writer.write(b"x-more: yes\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.1)
            elif path == "/trickle-body":
                writer.write(b"HTTP/1.1 503 Busy\r\nretry-after: 7\r\nconnection: close\r\n\r\nbusy")
                while True:
                    await writer.drain()
                    await asyncio.sleep(0.1)
                    writer.write(b".")
            elif path == "/redirect":
                writer.write(b"HTTP/1.1 302 Found\r\nlocation: /landed\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            self.hung_up.set()
        finally:
            writer.close()


async def deliver(url: str) -> tuple[int | ApplicationError, float]:
    """The delivery activity's outcome for one try at `url` (its status or its error) and the seconds it took."""
    secrets = SimpleNamespace(get=lambda _key: asyncio.sleep(0, SimpleNamespace(value=SECRET.encode())))
    hooks = WebhookActivities(secrets, allow=(ipaddress.ip_network("127.0.0.1/32"),), try_deadline_s=DEADLINE_S)
    d = WebhookDelivery(job_id="job_limits", url=url, event_type="job.succeeded", created_at=0, data={})
    start = time.monotonic()
    try:
        # the outer bound only keeps a broken delivery from hanging the test
        return await asyncio.wait_for(ActivityEnvironment().run(hooks.deliver_webhook, d), 30), \
            time.monotonic() - start
    except ApplicationError as exc:
        return exc, time.monotonic() - start
    finally:
        await hooks.aclose()


@pytest.mark.parametrize("status", [200, 500])
async def test_a_gzip_bomb_is_never_decompressed(status: int):
    before = reset_peak_rss()
    async with RawReceiver() as base:
        outcome, _ = await deliver(f"{base}/bomb/{status}")
    assert peak_rss() - before < 64 * MIB
    if status == 200:
        assert outcome == 200
    else:
        assert isinstance(outcome, ApplicationError) and outcome.type == "WebhookFailed"
        assert outcome.message == "the receiver answered 500: (no plain-text body)"


async def test_a_huge_error_body_is_read_only_a_few_kb():
    before = reset_peak_rss()
    async with RawReceiver() as base:
        outcome, _ = await deliver(f"{base}/huge")
    assert peak_rss() - before < 64 * MIB
    assert isinstance(outcome, ApplicationError) and outcome.type == "WebhookFailed"
    assert outcome.message.startswith("the receiver answered 500: 'xxxx") and len(outcome.message) <= 230


async def test_headers_that_never_end_fail_the_try_at_its_deadline():
    receiver = RawReceiver()
    async with receiver as base:
        outcome, took = await deliver(f"{base}/trickle-headers")
        assert isinstance(outcome, ApplicationError) and outcome.type == "WebhookFailed"
        assert not outcome.non_retryable and "no answer within" in outcome.message
        assert took < DEADLINE_S + 2
        await asyncio.wait_for(receiver.hung_up.wait(), 5)  # the connection was closed


async def test_a_body_that_never_ends_keeps_its_status_and_stops_at_the_deadline():
    receiver = RawReceiver()
    async with receiver as base:
        outcome, took = await deliver(f"{base}/trickle-body")
        assert isinstance(outcome, ApplicationError) and outcome.type == "WebhookFailed"
        assert outcome.message.startswith("the receiver answered 503: 'busy")
        assert outcome.next_retry_delay.total_seconds() == 7  # its Retry-After still counts
        assert took < DEADLINE_S + 2
        await asyncio.wait_for(receiver.hung_up.wait(), 5)


async def test_redirects_are_not_followed():
    receiver = RawReceiver()
    async with receiver as base:
        outcome, _ = await deliver(f"{base}/redirect")
    assert isinstance(outcome, ApplicationError) and "302" in outcome.message
    assert receiver.paths == ["/redirect"]


@pytest.mark.parametrize("address", [
    "2002::1", "2002:a00:1::1", "2002:808:808::1",  # 6to4, whatever IPv4 it carries
    "fec0::1", "fc00::1", "fd12:3456::1", "2001::1", "64:ff9b:1::1",
    "64:ff9b::a00:1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 of 10.0.0.1, loopback, metadata
    "::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:100.64.0.1", "::ffff:0.0.0.0",
    "100.64.0.1", "100.127.255.254", "198.18.0.1", "198.19.255.254", "192.0.0.1", "192.0.2.1",
    "240.0.0.1", "255.255.255.255", "224.0.0.1", "ff02::1", "::", "::1", "::a00:1", "fe80::1",
    "2001:db8::1", "100::1",
])
def test_non_public_addresses_are_refused(address: str):
    assert not _public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
                                     "100.128.0.1", "198.20.0.1"])
def test_public_addresses_pass(address: str):
    assert _public(ipaddress.ip_address(address))


def worker_pid(stack) -> int:
    return stack.procs["worker"].proc.pid


async def test_a_gzip_bomb_leaves_the_workers_memory_flat(stack, http: httpx.Client, receiver: Receiver,
                                                          temporal: Client):
    before = reset_peak_rss(worker_pid(stack))
    job_id = create(http, receiver.base + "/bomb").json()["id"]
    wait_finished(http, job_id)
    assert await asyncio.wait_for(temporal.get_workflow_handle(f"{job_id}-webhook").result(), 60) == 200
    grew = peak_rss(worker_pid(stack)) - before
    assert grew < 100 * MIB, f"the worker's peak RSS grew {grew / MIB:.0f} MiB"


async def test_a_never_ending_answer_ends_within_one_tries_deadline(stack, http: httpx.Client,
                                                                     receiver: Receiver, temporal: Client):
    job_id = create(http, receiver.base + "/trickle").json()["id"]
    wait_finished(http, job_id)
    wait_deliveries(receiver, "/trickle", 1)
    # 15 s is the per-try deadline; the answer's 200 came at once, so the delivery ends long before it
    assert await asyncio.wait_for(temporal.get_workflow_handle(f"{job_id}-webhook").result(), 15) == 200
    # the worker hung up rather than read on
    await eventually_async(lambda: "/trickle" in receiver.hung_up, timeout=5, interval=0.05)
    assert len(receiver.for_path("/trickle")) == 1
