"""A webhook receiver on loopback: records every delivery; the path picks its behaviour.

  /ok          200
  /flaky/<n>   500 for the first n deliveries, then 200
  /gone        410
  /bomb        200 with a gzip body: 512 MiB of zeros in about 530 kB, made as it is sent
  /trickle     200, then a body byte every 0.2 s until the client hangs up (noted in `hung_up`)
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import LoopbackServer


class Receiver(LoopbackServer):
    def __init__(self) -> None:
        self.deliveries: list[tuple[str, dict[str, str], bytes, float]] = []
        self.count: Counter[str] = Counter()
        self.hung_up: dict[str, float] = {}
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
        if path == "/bomb":
            return StreamingResponse(gzip_bomb(512), headers={"content-encoding": "gzip"})
        if path == "/trickle":
            return StreamingResponse(self.trickle(path))
        return Response(status_code=200)

    async def trickle(self, path: str):
        try:
            for _ in range(300):  # a minute at most, should nobody hang up
                yield b"."
                await asyncio.sleep(0.2)
        finally:
            self.hung_up[path] = time.monotonic()

    def for_path(self, path: str):
        return [d for d in self.deliveries if d[0] == path]


async def gzip_bomb(mib: int):
    """A gzip stream of `mib` MiB of zeros; each MiB after the first is the same 1 kB block."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    yield c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    for _ in range(mib - 1):
        yield block
