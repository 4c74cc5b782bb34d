"""Our SSE frames as the official SDK's decoder reads them."""

from __future__ import annotations

from openai._streaming import SSEDecoder

from proxy.jobs.render import ChunkWriter, TextChunkWriter
from proxy.http.sse import DONE, KEEPALIVE
from schemas.events import Delta


def test_keepalives_between_events_are_invisible_to_the_sdk():
    for writer in (ChunkWriter("job", "m", 1, False), TextChunkWriter("job", "m", 1, False)):
        stream = (KEEPALIVE + writer.frames(Delta(seq=2, attempt=1, content="a")) + KEEPALIVE + KEEPALIVE
                  + writer.frames(Delta(seq=3, attempt=1, content="b")) + KEEPALIVE + DONE)
        pieces = [stream[i:i + 7] for i in range(0, len(stream), 7)]  # any split of the bytes
        events = list(SSEDecoder().iter_bytes(iter(pieces)))
        assert [e.id for e in events] == ["8", "12", "12"]  # seq * 4; [DONE] keeps the last id
        assert all(e.data for e in events) and events[-1].data == "[DONE]"
