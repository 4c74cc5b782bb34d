"""Payload encryption: every Temporal payload (workflow and activity inputs and results, signals,
queries, memos) is AES-GCM encrypted before it leaves the process, so histories hold no request bodies.

SWITCHYARD_PAYLOAD_KEYS="kid1:<base64 key>,kid0:<base64 older key>": the first key encrypts, every
listed key decrypts (rotation: put a new key first; keep an old one while histories it encrypted are
kept). A key is 16, 24 or 32 bytes. "off" stores payloads in plain text (a warning, once).
`switchyard payload-key` prints a new entry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import secrets
import time
from collections.abc import Mapping, Sequence

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENV = "SWITCHYARD_PAYLOAD_KEYS"
OFF = "off"
ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
# A batch this large is encrypted on a thread (AES-GCM releases the GIL): ~0.1 ms of CPU and up
# stays off the event loop; smaller ones cost less than the hand-off.
OFFLOAD_BYTES = 128 * 1024

log = structlog.get_logger("switchyard.codec")


class PayloadKeyError(ValueError):
    """SWITCHYARD_PAYLOAD_KEYS is missing or malformed, or a payload names a key it does not hold."""


class PayloadTampered(ValueError):
    """An encrypted payload failed authentication: altered, or encrypted under another key."""


def parse_keys(text: str) -> dict[str, AESGCM]:
    """`kid:base64key,...` in order (the first encrypts); {} for "off"."""
    if text.strip().lower() == OFF:
        return {}
    keys: dict[str, AESGCM] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        kid, sep, b64 = entry.partition(":")
        kid = kid.strip()
        if not sep or not kid:
            raise PayloadKeyError(f"{ENV}: each entry is KEY_ID:BASE64_KEY; one has no key id")
        try:
            raw = base64.b64decode(b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise PayloadKeyError(f"{ENV}: key '{kid}' is not valid base64") from None
        if len(raw) not in (16, 24, 32):
            raise PayloadKeyError(f"{ENV}: key '{kid}' is {len(raw)} bytes; AES needs 16, 24 or 32")
        if kid in keys:
            raise PayloadKeyError(f"{ENV}: key id '{kid}' is listed twice")
        keys[kid] = AESGCM(raw)
    if not keys:
        raise PayloadKeyError(f"{ENV} lists no key; set it (`switchyard payload-key` makes one) or to '{OFF}'")
    return keys


def new_key_entry(kid: str | None = None) -> str:
    """A fresh `kid:base64key` entry: a 256-bit key, its id the date unless given."""
    kid = kid or "k" + time.strftime("%Y%m%d", time.gmtime())
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def require_keys(env: Mapping[str, str] | None = None) -> None:
    """For a process's start: SystemExit with the reason unless SWITCHYARD_PAYLOAD_KEYS holds keys
    or says "off"."""
    text = (os.environ if env is None else env).get(ENV, "")
    if not text.strip():
        raise SystemExit(f"{ENV} is not set: Temporal histories would hold request bodies in plain text. "
                         f"Set it to KEY_ID:BASE64_KEY (`switchyard payload-key` prints one; every proxy "
                         f"and worker needs the same keys), or to '{OFF}' to store payloads unencrypted.")
    try:
        parse_keys(text)
    except PayloadKeyError as exc:
        raise SystemExit(str(exc)) from None


class EncryptionCodec(PayloadCodec):
    """AES-GCM over each serialized payload; the nonce (12 random bytes) leads the ciphertext, the key
    id travels in the metadata and is bound as associated data. Payloads without the encrypted
    encoding decode unchanged (histories recorded before encryption, or with it off)."""

    def __init__(self, keys: str | None = None) -> None:
        self._text = keys  # None: read SWITCHYARD_PAYLOAD_KEYS at first use
        self._keys: dict[str, AESGCM] | None = None
        self._warned = False

    def keys(self) -> dict[str, AESGCM] | None:
        """The keys in order, {} when encryption is off, None when SWITCHYARD_PAYLOAD_KEYS is not set."""
        if self._keys is None:
            text = self._text if self._text is not None else os.environ.get(ENV, "")
            if not text.strip():
                return None  # not cached: a process may set the variable before its first use
            self._keys = parse_keys(text)
        return self._keys

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        keys = self.keys()
        if keys is None:
            raise PayloadKeyError(f"{ENV} is not set; refusing to store payloads in plain text")
        if not keys:
            if not self._warned:
                self._warned = True
                log.warning("payload_encryption_off", hint=f"{ENV}={OFF}: histories hold request bodies")
            return list(payloads)
        kid, key = next(iter(keys.items()))
        if _size(payloads) >= OFFLOAD_BYTES:
            return await asyncio.to_thread(_encrypt_all, payloads, kid, key)
        return _encrypt_all(payloads, kid, key)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if not any(p.metadata.get("encoding") == ENCODING for p in payloads):
            return list(payloads)
        keys = self.keys() or {}
        if _size(payloads) >= OFFLOAD_BYTES:
            return await asyncio.to_thread(_decrypt_all, payloads, keys)
        return _decrypt_all(payloads, keys)


def _size(payloads: Sequence[Payload]) -> int:
    return sum(len(p.data) for p in payloads)


def _encrypt_all(payloads: Sequence[Payload], kid: str, key: AESGCM) -> list[Payload]:
    aad = kid.encode()
    out = []
    for p in payloads:
        nonce = os.urandom(NONCE_BYTES)
        out.append(Payload(metadata={"encoding": ENCODING, KEY_ID: aad},
                           data=nonce + key.encrypt(nonce, p.SerializeToString(), aad)))
    return out


def _decrypt_all(payloads: Sequence[Payload], keys: dict[str, AESGCM]) -> list[Payload]:
    out = []
    for p in payloads:
        if p.metadata.get("encoding") != ENCODING:
            out.append(p)
            continue
        aad = p.metadata.get(KEY_ID, b"")
        kid = aad.decode(errors="replace")
        key = keys.get(kid)
        if key is None:
            known = ", ".join(keys) or "none"
            raise PayloadKeyError(f"payload encrypted with key id '{kid}', which {ENV} does not hold "
                                  f"(it holds: {known})")
        try:
            plain = key.decrypt(p.data[:NONCE_BYTES], p.data[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):  # ValueError: data too short to hold a nonce
            raise PayloadTampered(f"payload under key id '{kid}' failed authentication: "
                                  "altered, or encrypted with another key of that id") from None
        out.append(Payload.FromString(plain))
    return out
