"""POST /v1/audio/transcriptions, /v1/audio/translations (multipart in) and /v1/audio/speech.

An upload is admitted first (scopes, limits), then written to the object store; only its reference
travels through Temporal (Temporal refuses payloads over 2 MB). A transcription's result is stored
in the asked format and sent back from the store. Speech is streamed: the audio bytes come as the
engine makes them, through the job's event stream; the whole file is also stored as the job's result.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, AsyncIterator

import msgspec
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from orchestration.objectstore import upload_key
from gatekeeping.auth import Principal
from proxy.http.sse import SSEResponse
from proxy.jobs.render import ResultAssembler, ResultWriter
from schemas.errors import InvalidRequest, PayloadTooLarge, ServiceUnavailable
from proxy.jobs.store import prefers_async, release_admission
from proxy.jobs.pipelines import as_pipeline
from proxy.runtime import Runtime
from proxy.jobs.results import stored_result
from proxy.jobs.prepare import PreparedJob, convert_request, find_model, new_job
from proxy.jobs.run import JobRun
from proxy.http.body import read_json_body
from proxy.jobs.relay import EventFeed
from schemas.audio import MAX_AUDIO_BYTES, SPEECH_MEDIA_TYPES, SpeechRequest, TranscriptionRequest
from schemas.events import Cancelled, Delta, Failed, Finished, JobEvent, Restarted
from proxy.endpoints.endpoint import Endpoint
from proxy.http.operations import JOB_ID_HEADER, audio_in_operation, json_job_operation, ok
from proxy.jobs.render import SpeechWriter
from schemas import endpoints
from schemas.jobs import SPEECH_ENDPOINT, TRANSCRIPTIONS_ENDPOINT, TRANSLATIONS_ENDPOINT

TRANSCRIPTIONS, TRANSLATIONS, SPEECH = TRANSCRIPTIONS_ENDPOINT, TRANSLATIONS_ENDPOINT, SPEECH_ENDPOINT
FORM_OVERHEAD = 64 * 1024  # room for the multipart boundaries and the other fields
_SUFFIX = re.compile(r"\.([A-Za-z0-9]{1,8})$")
# The audio containers Whisper engines decode (OpenAI's list).
AUDIO_SUFFIXES = frozenset({"flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "oga", "opus", "wav", "webm"})


class Upload:
    """The audio file of a transcription request, read whole (at most MAX_AUDIO_BYTES)."""

    def __init__(self, data: bytes, filename: str):
        self.data = data
        self.filename = filename
        self.digest = hashlib.sha256(data).hexdigest()
        match = _SUFFIX.search(filename)
        self.suffix = match.group(1).lower() if match else ""


def _limited(request: Request, limit: int) -> Request:
    """The request with a body that fails with 413 past `limit` bytes, declared or not."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
    seen = 0
    receive = request.receive

    async def counting():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        return message

    return Request(request.scope, counting)


async def read_form(request: Request) -> tuple[dict[str, Any], Upload]:
    """The form's fields (`timestamp_granularities[]` gathered into a list) and its one file."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("This endpoint takes multipart/form-data with the audio as `file`.",
                             code="invalid_content_type")
    limited = _limited(request, MAX_AUDIO_BYTES + FORM_OVERHEAD)
    try:
        form = await limited.form(max_files=1, max_fields=32)
    except MultiPartException as exc:
        raise InvalidRequest(f"Invalid multipart body: {exc.message}", code="invalid_multipart") from None
    try:
        fields: dict[str, Any] = {}
        upload: Upload | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "file":
                    raise InvalidRequest(f"Unexpected file field '{name}'; send the audio as `file`.", param=name)
                data = await value.read()
                if len(data) > MAX_AUDIO_BYTES:
                    raise PayloadTooLarge(f"The audio file is larger than {MAX_AUDIO_BYTES} bytes.")
                upload = Upload(data, value.filename or "audio")
            elif name == "timestamp_granularities[]" or name == "timestamp_granularities":
                fields.setdefault("timestamp_granularities", []).append(value)
            elif name in fields:
                raise InvalidRequest(f"The field '{name}' is given more than once.", param=name)
            else:
                fields[name] = value
    finally:
        await form.close()
    if upload is None:
        raise InvalidRequest("Missing the audio file: send it as the `file` field.", param="file")
    if not upload.data:
        raise InvalidRequest("The audio file is empty.", param="file")
    if upload.suffix and upload.suffix not in AUDIO_SUFFIXES:
        raise InvalidRequest(f"Invalid file format '{upload.suffix}'. Supported formats: "
                             f"{sorted(AUDIO_SUFFIXES)}.", param="file", code="invalid_file_format")
    return _typed(fields), upload


def _typed(fields: dict[str, Any]) -> dict[str, Any]:
    """Form values are strings: the numeric and boolean ones as JSON would have them."""
    out = dict(fields)
    if "temperature" in out:
        try:
            out["temperature"] = float(out["temperature"])
        except ValueError:
            raise InvalidRequest("'temperature' must be a number.", param="temperature") from None
    if "stream" in out:
        out["stream"] = str(out["stream"]).lower() in ("true", "1")
    return out


def prepare_transcription(rt: Runtime, principal: Principal, fields: dict[str, Any], upload: Upload,
                          endpoint: str, idempotency_key: str | None) -> PreparedJob:
    req = convert_request(fields, TranscriptionRequest)
    if req.stream:
        raise InvalidRequest("Streamed transcriptions are not supported; submit a job "
                             "(Prefer: respond-async) to follow its progress.", param="stream")
    if req.timestamp_granularities and req.response_format != "verbose_json":
        raise InvalidRequest("timestamp_granularities requires response_format verbose_json.",
                             param="timestamp_granularities")
    if endpoint == TRANSLATIONS and "language" in fields:
        raise InvalidRequest("Translations always produce English; 'language' is not accepted.",
                             param="language")
    model = find_model(rt, req.model, endpoint)
    if model.pipeline and req.response_format != "json":
        raise InvalidRequest(f"The pipeline '{model.id}' answers with JSON ({{\"text\": ...}}) only.",
                             param="response_format", code="unsupported_format")
    raw = {**fields, "file_sha256": upload.digest}  # the idempotency hash covers the file
    body = {k: v for k, v in fields.items() if k != "stream"}
    job = new_job(principal, model, endpoint, req, raw, body, idempotency_key=idempotency_key,
                  options={"filename": upload.filename[:128]})
    return as_pipeline(rt.catalog, job)


async def _store_upload(rt: Runtime, job: PreparedJob, upload: Upload) -> PreparedJob:
    assert rt.objects is not None
    key = upload_key(job.job_id, upload.digest[:32], upload.suffix)
    try:
        ref = await rt.objects.put(key, upload.data, content_type="application/octet-stream")
    except Exception:
        raise ServiceUnavailable("The object store is unavailable; please retry.",
                                 code="object_store_unavailable") from None
    inference = job.inp.inference
    inference = msgspec.structs.replace(inference, options={**inference.options, "audio_ref": ref})
    return msgspec.structs.replace(job, inp=msgspec.structs.replace(job.inp, inference=inference))


async def _transcribe(request: Request, endpoint: str) -> Response | SSEResponse:
    rt: Runtime = request.app.state.runtime
    fields, upload = await read_form(request)
    job = prepare_transcription(rt, request.state.principal, fields, upload, endpoint,
                                request.headers.get("idempotency-key"))
    run = JobRun(rt, request, job)
    await run.admit()  # before the upload is stored: a refused request leaves nothing in the store
    try:
        run.job = await _store_upload(rt, run.job, upload)
    except BaseException:
        await release_admission(rt, run.job.inp)
        raise
    chunks = ResultWriter(job.job_id, job.model.id, job.memo.created, False)
    return await run.respond(chunks, ResultAssembler(chunks), stored_result, admitted=True)


async def transcriptions(request: Request) -> Response | SSEResponse:
    return await _transcribe(request, TRANSCRIPTIONS)


async def translations(request: Request) -> Response | SSEResponse:
    return await _transcribe(request, TRANSLATIONS)


TRANSCRIBE = Endpoint(spec=endpoints.TRANSCRIPTIONS, handler=transcriptions, writer=ResultWriter,
                      assembler=ResultAssembler, respond=stored_result,
                      operation=audio_in_operation("Transcribe audio (a job)"))
TRANSLATE = Endpoint(spec=endpoints.TRANSLATIONS, handler=translations, writer=ResultWriter,
                     assembler=ResultAssembler, respond=stored_result,
                     operation=audio_in_operation("Translate audio into English text (a job)"))


def prepare_speech(rt: Runtime, principal: Principal, raw: dict[str, Any], idempotency_key: str | None,
                   metadata: dict[str, str] | None = None, webhook_url: str = "") -> PreparedJob:
    req = convert_request(raw, SpeechRequest)
    model = find_model(rt, req.model, SPEECH)
    offer = model.speech
    if req.response_format not in offer.formats:
        raise InvalidRequest(f"The model '{model.id}' cannot produce '{req.response_format}'. "
                             f"Supported: {', '.join(offer.formats)}.", param="response_format",
                             code="unsupported_format")
    voice = req.voice
    if offer.voices:
        if voice == "default":
            voice = next(iter(offer.voices))
        if voice not in offer.voices:
            raise InvalidRequest(f"Unknown voice '{req.voice}'. Voices of '{model.id}': "
                                 f"{', '.join(offer.voices)}.", param="voice", code="invalid_voice")
        voice = offer.voices[voice]
    body = {"input": req.input, "voice": voice, "response_format": req.response_format, "speed": req.speed}
    return new_job(principal, model, SPEECH, req, raw, body, idempotency_key=idempotency_key,
                   metadata=metadata, webhook_url=webhook_url)


async def speech(request: Request) -> Response:
    """The audio, streamed as it is produced. An engine failure before the first bytes is an
    OpenAI error; after them the body can only be cut short (audio has no in-band errors)."""
    rt: Runtime = request.app.state.runtime
    raw = await read_json_body(request, rt.settings.max_body_bytes)
    job = prepare_speech(rt, request.state.principal, raw, request.headers.get("idempotency-key"))
    run = JobRun(rt, request, job)
    await run.admit()
    if prefers_async(request):
        return await run.start_in_background()
    await run.start()
    batch = await run.opening_batch()
    fmt = raw.get("response_format", "mp3")
    assert run.feed is not None
    return StreamingResponse(_audio(run.feed, batch, job.model.timeouts.start_to_close_s),
                             media_type=SPEECH_MEDIA_TYPES.get(fmt, "application/octet-stream"),
                             headers=run.headers)


async def _audio(feed: EventFeed, batch: list[JobEvent], timeout_s: float) -> AsyncIterator[bytes]:
    try:
        while True:
            for event in batch:
                if isinstance(event, Delta) and event.audio:
                    yield event.audio
                elif isinstance(event, Finished):
                    return
                elif isinstance(event, (Failed, Cancelled, Restarted)):
                    # The bytes sent cannot be taken back: cut the body short so the client sees
                    # an incomplete download rather than a file that silently skips or repeats.
                    raise AudioInterrupted(type(event).__name__)
            batch = await feed.next_batch(timeout=timeout_s)
    finally:
        await feed.close()


class AudioInterrupted(Exception):
    pass


SPEAK = Endpoint(
    spec=endpoints.SPEECH, handler=speech, prepare=prepare_speech, writer=SpeechWriter, assembler=ResultAssembler,
    respond=stored_result,
    operation=json_job_operation(
        "audio", "Text to speech (a job), streamed as it is made", "SpeechRequest",
        ok("The audio file, sent as the engine produces it (chunked). A failure after the first bytes cuts "
           "the body short.", {t: {"schema": {"type": "string", "format": "binary"}}
                               for t in dict.fromkeys(SPEECH_MEDIA_TYPES.values())}, JOB_ID_HEADER),
        statuses=(400, 401, 403, 404, 409, 429, 503)))

ENDPOINTS = (TRANSCRIBE, TRANSLATE, SPEAK)
