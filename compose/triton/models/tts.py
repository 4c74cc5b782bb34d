"""`tts`: text to speech with hibari (PyPI hibari-tts: a 7.9 MB ONNX voice distilled from Kokoro-82M,
24 kHz mono). Decoupled: one response per sentence, as soon as it is synthesized and encoded.

    input  text_input   BYTES [1]   at most 4096 characters
    output audio        BYTES [1]   base64 of the next bytes of the encoded file (the generate
                                    extension returns BYTES as JSON strings); all responses'
                                    decoded bytes, concatenated, are one file of the asked format
    output sample_rate  INT32 [1]   24000
    request parameters: voice (an installed hibari voice; "default" is "heart"), speed (0.25 .. 4.0,
                        default 1), response_format (wav, pcm, flac, mp3, opus, aac; default mp3)

pcm is raw 16-bit little-endian mono at 24 kHz (OpenAI's pcm); wav is a streaming header (RIFF and
data sizes 0xFFFFFFFF, as OpenAI streams it) and that PCM; flac, mp3, opus (in Ogg) and aac (ADTS)
are encoded incrementally by PyAV's ffmpeg encoders. hibari's speed covers 0.25 .. 2; faster is
2 and ffmpeg's atempo for the rest (tempo without pitch).
"""

from __future__ import annotations

import base64
import struct
import time
from fractions import Fraction

import numpy as np

from models import params

MAX_CHARS = 4096
SAMPLE_RATE = 24000  # hibari's own rate, and OpenAI's for pcm: nothing to resample
MODEL_MAX_SPEED = 2.0
# response_format -> (container, encoder, bit rate); wav and pcm need no encoder.
CODECS = {"mp3": ("mp3", "libmp3lame", 64000), "flac": ("flac", "flac", None),
          "opus": ("ogg", "libopus", 32000), "aac": ("adts", "aac", 64000)}


def supported_formats() -> list[str]:
    """wav, pcm, and each encoded format whose ffmpeg encoder this PyAV build has."""
    import av

    out = ["wav", "pcm"]
    for name, (_, encoder, _) in CODECS.items():
        try:
            av.Codec(encoder, "w")
            out.append(name)
        except Exception:
            pass
    return out


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")


class _Sink:
    """A write-only file for PyAV's muxer; `take()` hands over what it wrote since the last take."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


class Encoder:
    """float32 audio in, the next bytes of the file out: `add(audio)` per sentence, then `close()`."""

    def __init__(self, fmt: str):
        self.fmt, self.started, self.pts = fmt, False, 0
        if fmt in CODECS:
            import av

            container, encoder, bit_rate = CODECS[fmt]
            self.sink = _Sink()
            # flush_packets: the muxer writes each packet out at once; ogg pages of 0.1 s, not 1 s
            options = {"flush_packets": "1", **({"page_duration": "100000"} if container == "ogg" else {})}
            self.container = av.open(self.sink, mode="w", format=container, options=options, buffer_size=4096)
            self.stream = self.container.add_stream(encoder, rate=SAMPLE_RATE, layout="mono")
            if bit_rate:
                self.stream.bit_rate = bit_rate

    def header(self) -> bytes:
        if self.fmt == "wav":  # the sizes of a stream of unknown length
            return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
                    + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
                    + b"data" + struct.pack("<I", 0xFFFFFFFF))
        return b""

    def add(self, audio: np.ndarray) -> bytes:
        head = b"" if self.started else self.header()
        self.started = True
        pcm = to_pcm16(audio)
        if self.fmt in ("wav", "pcm"):
            return head + pcm.tobytes()
        import av

        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, self.pts, Fraction(1, SAMPLE_RATE)
        self.pts += len(pcm)
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        return self.sink.take()

    def close(self) -> bytes:
        head = b"" if self.started else self.header()
        self.started = True
        if self.fmt not in CODECS:
            return head
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        return self.sink.take()


def atempo(audio: np.ndarray, factor: float) -> np.ndarray:
    """Speed up by `factor` keeping the pitch (ffmpeg's atempo filter)."""
    import av

    graph = av.filter.Graph()
    source = graph.add_abuffer(format="flt", sample_rate=SAMPLE_RATE, layout="mono",
                               time_base=Fraction(1, SAMPLE_RATE))
    tempo, sink = graph.add("atempo", f"{factor:.4f}"), graph.add("abuffersink")
    source.link_to(tempo)
    tempo.link_to(sink)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(audio.astype(np.float32).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate, frame.pts = SAMPLE_RATE, 0
    graph.push(frame)
    graph.push(None)
    out = []
    while True:
        try:
            out.append(graph.pull().to_ndarray().reshape(-1))
        except (av.error.EOFError, av.error.BlockingIOError):
            break
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def load_voices(threads: int = 2) -> dict:
    """Every hibari voice this machine has (the bundled "heart"; others only if already downloaded:
    the server is offline), each loaded once, G2P included."""
    from hibari import Hibari
    from hibari.voices import VOICES, voice_path

    voices = {}
    for name in VOICES:
        try:
            path = voice_path(name, download_missing=False)
        except FileNotFoundError:
            continue
        voices[name] = Hibari(voice=name, model=path, threads=threads)
        voices[name]("Warm up.")
    return voices


def parse(request, voices: dict, formats: list[str]):
    from hibari.voices import DEFAULT, VOICES

    text = params.text(request, "text_input")
    if not text.strip():
        raise ValueError("the input text is empty")
    if len(text) > MAX_CHARS:
        raise ValueError(f"the input text is {len(text)} characters; at most {MAX_CHARS} are allowed")
    voice = params.as_str(request, "voice", "default").strip().lower()
    voice = DEFAULT if voice == "default" else voice
    if voice not in voices:
        known = ", ".join(["default", *voices])
        reason = "is not installed on this server" if voice in VOICES else "is unknown"
        raise ValueError(f"voice {voice!r} {reason}; available voices: {known}")
    speed = params.as_float(request, "speed", 1.0)
    if not 0.25 <= speed <= 4.0:
        raise ValueError(f"speed must be between 0.25 and 4.0, not {speed}")
    fmt = params.as_str(request, "response_format", "mp3").strip().lower()
    if fmt not in formats:
        raise ValueError(f"response_format {fmt!r} is not supported; supported formats: {', '.join(formats)}")
    return text, voices[voice], speed, fmt


def bind(triton) -> None:
    from pytriton.model_config import ModelConfig, Tensor

    voices = load_voices()
    formats = supported_formats()
    rate = np.array([SAMPLE_RATE], dtype=np.int32)

    def response(chunk: bytes) -> list[dict]:
        return [{"audio": np.array([base64.b64encode(chunk)], dtype=np.object_), "sample_rate": rate}]

    def infer(requests):  # decoupled: yields one response at a time
        for request in requests:
            started = time.perf_counter()
            text, tts, speed, fmt = parse(request, voices, formats)
            encoder, first = Encoder(fmt), None
            for audio in tts.stream(text, speed=min(speed, MODEL_MAX_SPEED)):
                if speed > MODEL_MAX_SPEED:
                    audio = atempo(audio, speed / MODEL_MAX_SPEED)
                chunk = encoder.add(audio)
                if chunk:
                    first = first or time.perf_counter()
                    yield response(chunk)
            yield response(encoder.close())
            done = time.perf_counter()
            print(f"tts: {len(text)} chars as {fmt}, first chunk {((first or done) - started):.2f} s, "
                  f"all {done - started:.2f} s", flush=True)

    triton.bind(model_name="tts", infer_func=infer,
                inputs=[Tensor(name="text_input", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="audio", dtype=bytes, shape=(1,)),
                         Tensor(name="sample_rate", dtype=np.int32, shape=(1,))],
                config=ModelConfig(batching=False, decoupled=True))
