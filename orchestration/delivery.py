"""Webhook delivery: a durable activity retried for hours with backoff and jitter."""

from __future__ import annotations

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
TIMEOUT_S = 15.0


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
    def __init__(self, secrets_kv, allow: tuple = (), base_delay_s: float = 5.0, max_delay_s: float = 3600.0):
        self._secrets = secrets_kv
        self._allow = allow
        self._base = base_delay_s
        self._max = max_delay_s
        self._client = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)

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
        try:
            host, port, address = await check_target(d.url, self._allow)
        except WebhookTargetError as exc:
            raise ApplicationError(str(exc), type="WebhookTargetRefused", non_retryable=True) from None
        body = _encoder.encode({"id": f"evt_{d.job_id}", "object": "event", "type": d.event_type,
                                "created_at": d.created_at, "data": d.data})
        msg_id = f"msg_{d.job_id}_{d.event_type}"
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "user-agent": "Switchyard-Webhooks/1",
                   "host": f"{host}:{port}" if urlsplit(d.url).port else host,
                   "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(secret, msg_id, timestamp, body)}
        parts = urlsplit(d.url)
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        try:
            r = await self._client.post(target, content=body, headers=headers,
                                        extensions={"sni_hostname": host})
        except httpx.HTTPError as exc:
            raise ApplicationError(f"webhook delivery failed: {type(exc).__name__}", type="WebhookFailed",
                                   next_retry_delay=timedelta(seconds=self._backoff(attempt))) from None
        if 200 <= r.status_code < 300:
            return r.status_code
        if r.status_code == 410:
            raise ApplicationError("the receiver answered 410 Gone; delivery stops", type="WebhookGone",
                                   non_retryable=True)
        delay = retry_after_s(r.headers.get("retry-after"))
        delay = min(self._max, delay) if delay is not None else self._backoff(attempt)
        raise ApplicationError(f"the receiver answered {r.status_code}", type="WebhookFailed",
                               next_retry_delay=timedelta(seconds=delay))
