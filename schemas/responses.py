"""OpenAI's Responses API on the wire: the request and its input items, the Response object with its
output items, and the typed stream events (each with its `sequence_number`).

A request's `input` may hold messages without `"type"` (OpenAI's EasyInputMessage): `input_items`
names them before they are decoded, so every item here is a tagged union member."""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

from schemas.openai import ErrorBody

RESPONSES_ENDPOINT = "/v1/responses"

# ---- input ----------------------------------------------------------------------------------------


class InputText(msgspec.Struct, tag_field="type", tag="input_text"):
    text: str


class InputImage(msgspec.Struct, tag_field="type", tag="input_image", omit_defaults=True):
    image_url: Union[str, None] = None
    file_id: Union[str, None] = None
    detail: str = "auto"


class OutputText(msgspec.Struct, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class Refusal(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


ContentPart = Union[InputText, InputImage, OutputText, Refusal]


class Message(msgspec.Struct, tag_field="type", tag="message", omit_defaults=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, list[ContentPart]]
    id: Union[str, None] = None
    status: Union[str, None] = None


class FunctionCall(msgspec.Struct, tag_field="type", tag="function_call", omit_defaults=True):
    call_id: str
    name: str
    arguments: str
    id: Union[str, None] = None
    status: Union[str, None] = None


class FunctionCallOutput(msgspec.Struct, tag_field="type", tag="function_call_output", omit_defaults=True):
    call_id: str
    output: Union[str, list[ContentPart]]
    id: Union[str, None] = None
    status: Union[str, None] = None


InputItem = Union[Message, FunctionCall, FunctionCallOutput]


def input_items(value: Union[str, list[Any]]) -> list[Any]:
    """`input` as a list of tagged items: a string is one user message; a message without `type`
    gets its tag."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [{"type": "message", **v} if isinstance(v, dict) and "type" not in v and "role" in v else v
            for v in value]


# ---- request --------------------------------------------------------------------------------------


class FunctionTool(msgspec.Struct, tag_field="type", tag="function", omit_defaults=True):
    name: str
    parameters: Union[dict[str, Any], None] = None
    strict: Union[bool, None] = None
    description: Union[str, None] = None


class FormatText(msgspec.Struct, tag_field="type", tag="text"):
    pass


class FormatJSONObject(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class FormatJSONSchema(msgspec.Struct, tag_field="type", tag="json_schema", omit_defaults=True):
    name: str
    schema: dict[str, Any]
    strict: Union[bool, None] = None
    description: Union[str, None] = None


class TextConfig(msgspec.Struct, omit_defaults=True):
    format: Union[FormatText, FormatJSONObject, FormatJSONSchema] = msgspec.field(default_factory=FormatText)
    verbosity: Union[str, None] = None


class FunctionChoice(msgspec.Struct, tag_field="type", tag="function"):
    name: str


ToolChoice = Union[Literal["none", "auto", "required"], FunctionChoice]


class ResponsesRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    input: list[InputItem]  # a string input is one user message (`input_items`)
    instructions: Union[str, None] = None
    max_output_tokens: Union[int, None] = msgspec.field(default=None)
    temperature: Union[float, None] = None
    top_p: Union[float, None] = None
    tools: list[FunctionTool] = []
    tool_choice: Union[ToolChoice, None] = None
    parallel_tool_calls: Union[bool, None] = None
    text: Union[TextConfig, None] = None
    metadata: Union[dict[str, str], None] = None
    store: bool = True
    background: bool = False
    stream: bool = False
    previous_response_id: Union[str, None] = None
    priority: Union[int, str, None] = None  # Switchyard's own, read at admission
    # Accepted and not acted on: OpenAI platform options that mean nothing to a self-hosted engine.
    user: Union[str, None] = None
    safety_identifier: Union[str, None] = None
    prompt_cache_key: Union[str, None] = None
    service_tier: Union[str, None] = None
    truncation: Union[str, None] = None
    include: Union[list[str], None] = None
    stream_options: Union[dict[str, Any], None] = None
    reasoning: Union[dict[str, Any], None] = None


# ---- output ---------------------------------------------------------------------------------------


class OutputMessage(msgspec.Struct, tag_field="type", tag="message"):
    id: str
    status: str
    role: str = "assistant"
    content: list[OutputText] = []


class OutputFunctionCall(msgspec.Struct, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


OutputItem = Union[OutputMessage, OutputFunctionCall]


class TokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: TokensDetails = msgspec.field(default_factory=TokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)


class ResponseError(msgspec.Struct):
    code: Union[str, None]
    message: str


class IncompleteDetails(msgspec.Struct):
    reason: str


Status = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
ENDED: tuple[str, ...] = ("completed", "incomplete", "failed", "cancelled")


class Response(msgspec.Struct):
    id: str
    created_at: int
    model: str
    status: Status = "in_progress"
    object: str = "response"
    output: list[OutputItem] = []
    error: Union[ResponseError, None] = None
    incomplete_details: Union[IncompleteDetails, None] = None
    instructions: Union[str, None] = None
    metadata: dict[str, str] = {}
    tools: list[FunctionTool] = []
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    temperature: Union[float, None] = None
    top_p: Union[float, None] = None
    max_output_tokens: Union[int, None] = None
    previous_response_id: Union[str, None] = None
    store: bool = True
    background: bool = False
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    usage: Union[ResponseUsage, None] = None
    completed_at: Union[int, None] = None


class DeletedResponse(msgspec.Struct):
    id: str
    object: str = "response"
    deleted: bool = True


class InputItemList(msgspec.Struct):
    data: list[Any]
    first_id: Union[str, None]
    last_id: Union[str, None]
    has_more: bool
    object: str = "list"


# ---- stream events --------------------------------------------------------------------------------


class StreamEvent(msgspec.Struct, tag_field="type", kw_only=True):
    sequence_number: int


class Created(StreamEvent, tag="response.created"):
    response: Response


class InProgress(StreamEvent, tag="response.in_progress"):
    response: Response


class Completed(StreamEvent, tag="response.completed"):
    response: Response


class Incomplete(StreamEvent, tag="response.incomplete"):
    response: Response


class FailedEvent(StreamEvent, tag="response.failed"):
    """Also how a cancelled response ends a stream (`response.status` "cancelled"): OpenAI's stream
    has no event of its own for that."""

    response: Response


class OutputItemAdded(StreamEvent, tag="response.output_item.added"):
    output_index: int
    item: OutputItem


class OutputItemDone(StreamEvent, tag="response.output_item.done"):
    output_index: int
    item: OutputItem


class ContentPartAdded(StreamEvent, tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class ContentPartDone(StreamEvent, tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class OutputTextDelta(StreamEvent, tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = []


class OutputTextDone(StreamEvent, tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = []


class ArgumentsDelta(StreamEvent, tag="response.function_call_arguments.delta"):
    item_id: str
    output_index: int
    delta: str


class ArgumentsDone(StreamEvent, tag="response.function_call_arguments.done"):
    item_id: str
    output_index: int
    arguments: str
    name: str = ""


class ErrorEvent(StreamEvent, tag="error"):
    message: str
    code: Union[str, None] = None
    param: Union[str, None] = None


ResponseStreamEvent = Union[Created, InProgress, Completed, Incomplete, FailedEvent, OutputItemAdded,
                            OutputItemDone, ContentPartAdded, ContentPartDone, OutputTextDelta,
                            OutputTextDone, ArgumentsDelta, ArgumentsDone, ErrorEvent]


def error_of(body: ErrorBody) -> ResponseError:
    return ResponseError(code=body.code, message=body.message)


# The webhook event a response's ending sends (OpenAI's names), by the Response's final status.
WEBHOOK_EVENTS = {"completed": "response.completed", "incomplete": "response.incomplete",
                  "failed": "response.failed", "cancelled": "response.cancelled"}


def ended_status(outcome: str, finish_reason: Union[str, None] = None) -> str:
    """A /v1/responses job's final Response status from how its job ended ("succeeded", "failed",
    "cancelled") and its finish reason: for the tenant webhook (`WEBHOOK_EVENTS[...]`, data `{"id"}`)."""
    if outcome == "succeeded":
        return "incomplete" if finish_reason in ("length", "content_filter") else "completed"
    return outcome
