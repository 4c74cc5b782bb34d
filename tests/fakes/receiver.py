"""A webhook receiver on loopback: records every delivery; the path picks its behaviour.

  /ok          200
  /flaky/<n>   500 for the first n deliveries, then 200
  /gone        410
"""

from __future__ import annotations

import time
from collections import Counter

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.server import LoopbackServer


class Receiver(LoopbackServer):
    def __init__(self) -> None:
        self.deliveries: list[tuple[str, dict[str, str], bytes, float]] = []
        self.count: Counter[str] = Counter()
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        body = await request.body()
        self.deliveries.append((path, dict(request.headers), body, time.monotonic()))
        self.count[path] += 1
        if path.startswith("/flaky/") and self.count[path] <= int(path.rsplit("/", 1)[1]):
            return Response("try later", status_code=500)
        if path == "/gone":
            return Response(status_code=410)
        return Response(status_code=200)

    def for_path(self, path: str):
        return [d for d in self.deliveries if d[0] == path]
