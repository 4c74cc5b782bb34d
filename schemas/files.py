"""The Files API's wire types (/v1/files), in OpenAI's shapes, and the record kept per file."""

from __future__ import annotations

from typing import Literal, Union

import msgspec

FILES_ENDPOINT = "/v1/files"
FILE_PURPOSES = ("batch", "fine-tune", "user_data")
# OpenAI's other upload purposes: accepted and stored, used by nothing here.
STORED_ONLY_PURPOSES = ("assistants", "vision", "evals")
# The purposes of files Switchyard writes itself (a batch's output and errors, a fine-tune's results).
OUTPUT_PURPOSES = ("batch_output", "fine-tune-results")
UPLOAD_PURPOSES = FILE_PURPOSES + STORED_ONLY_PURPOSES
MIN_EXPIRES_AFTER_S = 3600
MAX_EXPIRES_AFTER_S = 30 * 24 * 3600


class FileObject(msgspec.Struct, kw_only=True):
    id: str  # "file-" + 32 hex digits
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    expires_at: Union[int, None] = None
    status_details: None = None


class FileList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: Union[str, None]
    last_id: Union[str, None]
    has_more: bool


class FileDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class FileRecord(msgspec.Struct, kw_only=True):
    """What the metadata bucket keeps per file: the object, its owner, and where its bytes are."""

    file: FileObject
    tenant: str
    key: str  # the object store key of its bytes
