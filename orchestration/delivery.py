"""Webhook delivery: a durable activity retried for hours with backoff and jitter."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestration.webhooks import WebhookTargetError, check_target, sign
from schemas.jobs import WebhookDelivery

_encoder = msgspec.json.Encoder()
TRY_DEADLINE_S = 15.0  # one try in all: resolve, connect, send, read (the activity's own timeout is 20 s)
KEEP_BYTES = 4096  # of a failing answer's body if it is plain; an encoded one is not read


def retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class WebhookActivities:
    def __init__(self, secrets_kv, allow: tuple = (), base_delay_s: float = 5.0, max_delay_s: float = 3600.0,
                 try_deadline_s: float = TRY_DEADLINE_S):
        self._secrets = secrets_kv
        self._allow = allow
        self._base = base_delay_s
        self._max = max_delay_s
        self._deadline = try_deadline_s
        # trust_env off: an HTTP(S)_PROXY from the environment would connect to the name itself and
        # bypass the pinned, checked address.
        self._client = httpx.AsyncClient(timeout=try_deadline_s, follow_redirects=False, trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._max, self._base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # jitter keeps retries from arriving in waves

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(self, d: WebhookDelivery) -> int:
        attempt = activity.info().attempt
        try:
            secret = (await self._secrets.get(d.job_id)).value.decode()
        except Exception:
            raise ApplicationError("the webhook secret is gone", type="WebhookSecretMissing",
                                   non_retryable=True) from None
        status, retry_after, kept = None, None, b""
        try:
            async with asyncio.timeout(self._deadline):
                try:
                    host, port, address = await check_target(d.url, self._allow)
                except WebhookTargetError as exc:
                    raise ApplicationError(str(exc), type="WebhookTargetRefused", non_retryable=True) from None
                url, body, headers = self._request(d, secret, host, port, address)
                async with self._client.stream("POST", url, content=body, headers=headers,
                                               extensions={"sni_hostname": host}) as r:
                    status, retry_after = r.status_code, r.headers.get("retry-after")
                    if not 200 <= status < 300 and r.headers.get("content-encoding", "identity") == "identity":
                        async for chunk in r.aiter_raw():
                            kept += chunk
                            if len(kept) >= KEEP_BYTES:
                                break
                # leaving the block closes the connection, with whatever the body still holds unread
        except (TimeoutError, httpx.HTTPError) as exc:
            if status is None:  # no answer; a body cut short by the deadline still has its status
                reason = f"no answer within {self._deadline:g} s" if isinstance(exc, TimeoutError) \
                    else type(exc).__name__
                raise ApplicationError(f"webhook delivery failed: {reason}", type="WebhookFailed",
                                       next_retry_delay=timedelta(seconds=self._backoff(attempt))) from None
        if 200 <= status < 300:
            return status
        if status == 410:
            raise ApplicationError("the receiver answered 410 Gone; delivery stops", type="WebhookGone",
                                   non_retryable=True)
        delay = retry_after_s(retry_after)
        delay = min(self._max, delay) if delay is not None else self._backoff(attempt)
        excerpt = repr(kept[:KEEP_BYTES].decode("utf-8", "replace"))[:200] if kept else "(no plain-text body)"
        raise ApplicationError(f"the receiver answered {status}: {excerpt}", type="WebhookFailed",
                               next_retry_delay=timedelta(seconds=delay))

    @staticmethod
    def _request(d: WebhookDelivery, secret: str, host: str, port: int, address: str) -> tuple[str, bytes, dict]:
        """The URL (the checked address, so DNS cannot change it), the signed body and its headers."""
        body = _encoder.encode({"id": f"evt_{d.job_id}", "object": "event", "type": d.event_type,
                                "created_at": d.created_at, "data": d.data})
        msg_id = f"msg_{d.job_id}_{d.event_type}"
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "user-agent": "Switchyard-Webhooks/1",
                   "accept-encoding": "identity",
                   "host": f"{host}:{port}" if urlsplit(d.url).port else host,
                   "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(secret, msg_id, timestamp, body)}
        parts = urlsplit(d.url)
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), body, headers
