"""`switchyard jobs`: a tenant's jobs from the terminal, over the proxy's public HTTP API.

    switchyard jobs list [--limit 20]
    switchyard jobs show ID
    switchyard jobs tail ID [--after EVENT_ID]   # the text as it streams; resumes after a drop
    switchyard jobs cancel ID

The key comes from --api-key, $SWITCHYARD_API_KEY or `make run`'s demo key (var/demo_key); the
proxy from --base-url, $SWITCHYARD_BASE_URL or http://127.0.0.1:$SWITCHYARD_PORT.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from schemas.events import JOB_ENDINGS, JOB_SUCCEEDED

RECONNECTS = 20


class JobsError(Exception):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", default=None, help="the proxy (default: $SWITCHYARD_BASE_URL or "
                                                         "http://127.0.0.1:$SWITCHYARD_PORT)")
    common.add_argument("--api-key", default=None, help="default: $SWITCHYARD_API_KEY or var/demo_key")
    jobs = sub.add_parser("jobs", help="list, show, tail and cancel jobs through the proxy's API")
    actions = jobs.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("list", parents=[common], help="the tenant's jobs, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true")
    show = actions.add_parser("show", parents=[common], help="one job's status, stage, usage and error")
    show.add_argument("id")
    tail = actions.add_parser("tail", parents=[common], help="follow a job's output; a dropped connection resumes")
    tail.add_argument("id")
    tail.add_argument("--after", default=None, help="start after this event id")
    cancel = actions.add_parser("cancel", parents=[common], help="cancel a job (idempotent)")
    cancel.add_argument("id")
    jobs.set_defaults(fn=cmd_jobs)


def cmd_jobs(args: argparse.Namespace) -> int:
    import httpx

    base, key = _base_url(args.base_url), _api_key(args.api_key)
    if not key:
        print("no API key: pass --api-key or set SWITCHYARD_API_KEY", file=sys.stderr)
        return 2
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"},
                      timeout=httpx.Timeout(30, read=60)) as http:
        try:
            return {"list": _list, "show": _show, "tail": _tail, "cancel": _cancel}[args.action](http, args)
        except JobsError as exc:
            print(exc, file=sys.stderr)
            return 1
        except httpx.TransportError as exc:
            print(f"cannot reach {base}: {exc}", file=sys.stderr)
            return 1


def _base_url(given: str | None) -> str:
    if given or os.environ.get("SWITCHYARD_BASE_URL"):
        return (given or os.environ["SWITCHYARD_BASE_URL"]).rstrip("/").removesuffix("/v1")
    return f"http://127.0.0.1:{os.environ.get('SWITCHYARD_PORT', '8000')}"


def _api_key(given: str | None) -> str:
    if given or os.environ.get("SWITCHYARD_API_KEY"):
        return given or os.environ["SWITCHYARD_API_KEY"]
    demo = Path(os.environ.get("SWITCHYARD_VAR", "var")) / "demo_key"
    return demo.read_text().strip() if demo.exists() else ""


def _checked(r) -> dict[str, Any]:
    if r.status_code >= 400:
        try:
            error = r.json()["error"]
            raise JobsError(f"{r.status_code} {error.get('code') or error.get('type')}: {error['message']}")
        except (ValueError, KeyError, TypeError):
            raise JobsError(f"{r.status_code}: {r.text[:200]}") from None
    return r.json()


def _list(http, args: argparse.Namespace) -> int:
    page = _checked(http.get("/v1/jobs", params={"limit": args.limit}))
    if args.json:
        print(json.dumps(page["data"], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "endpoint", "model", "status", "created", "tokens", box=None)
    for job in page["data"]:
        created = time.strftime("%H:%M:%S", time.localtime(job.get("created_at") or 0))
        table.add_row(job["id"], job.get("endpoint", ""), job.get("model", ""), _status(job), created,
                      str(job.get("tokens") or (job.get("usage") or {}).get("total_tokens") or ""))
    Console().print(table)
    return 0


def _status(job: dict[str, Any]) -> str:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(job["status"], "cyan")
    stage = f" ({job['stage']})" if job.get("stage") and job["status"] == "running" else ""
    return f"[{colour}]{job['status']}[/]{stage}"


def _show(http, args: argparse.Namespace) -> int:
    print(json.dumps(_checked(http.get(f"/v1/jobs/{args.id}")), indent=2))
    return 0


def _cancel(http, args: argparse.Namespace) -> int:
    job = _checked(http.post(f"/v1/jobs/{args.id}/cancel"))
    print(f"{job['id']}: {job['status']}")
    return 0


def _tail(http, args: argparse.Namespace) -> int:
    """Writes the job's text to stdout as it arrives and its stage, tokens and status to stderr
    (a rich status line on a terminal); after a dropped connection it resumes after the last id."""
    import httpx
    from rich.console import Console

    _checked(http.get(f"/v1/jobs/{args.id}"))  # 404 for an unknown id, before any spinner
    console = Console(stderr=True)
    last_id, tokens, outcome = args.after, 0, None
    with console.status(f"{args.id}: waiting") as status:
        for attempt in range(RECONNECTS + 1):
            try:
                for event_id, name, data in _events(http, args.id, last_id):
                    last_id = event_id or last_id
                    if name is None:
                        text = _delta_text(data)
                        tokens += 1 if text else 0
                        sys.stdout.write(text)
                        sys.stdout.flush()
                        status.update(f"{args.id}: running, {tokens} chunks")
                    elif name in JOB_ENDINGS:
                        outcome = (name, json.loads(data))
                    else:
                        body = json.loads(data)
                        stage = f" ({body['stage']})" if body.get("stage") else ""
                        status.update(f"{args.id}: {name.removeprefix('job.')}{stage}, attempt "
                                      f"{body.get('attempt', 1)}")
                break
            except httpx.TransportError:
                if attempt == RECONNECTS:
                    raise
                status.update(f"{args.id}: connection lost, resuming after event {last_id}")
                time.sleep(min(2.0, 0.2 * 2 ** attempt))
    sys.stdout.write("\n")
    if outcome is None:
        raise JobsError(f"{args.id}: the event stream ended without a final event")
    name, body = outcome
    usage = body.get("usage") or {}
    detail = (f"{usage.get('total_tokens')} tokens" if usage else
              (body.get("error") or {}).get("error", {}).get("message") or body.get("reason") or "")
    console.print(f"{args.id}: [bold]{name.removeprefix('job.')}[/] {detail}".rstrip())
    return 0 if name == JOB_SUCCEEDED else 1


def _events(http, job_id: str, after: str | None) -> Iterator[tuple[str | None, str | None, str]]:
    """(id, event name or None, data) of each SSE event; ends with the stream."""
    headers = {"last-event-id": after} if after else {}
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
        if r.status_code >= 400:
            r.read()
            _checked(r)
        event_id = name = None
        data: list[str] = []
        for line in r.iter_lines():
            if line == "":
                if data and data != ["[DONE]"]:
                    yield event_id, name, "\n".join(data)
                event_id = name = None
                data = []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "id":
                    event_id = value
                elif field == "event":
                    name = value
                elif field == "data":
                    data.append(value)


def _delta_text(data: str) -> str:
    chunk = json.loads(data)
    parts = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        parts.append((delta or {}).get("content") or choice.get("text") or "")
    return "".join(parts)
