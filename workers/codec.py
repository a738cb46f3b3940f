"""Optional payload encryption (AES-GCM) for everything that passes through Temporal.

PAYLOAD_ENCRYPTION_KEY is `key-id:base64-key[,old-id:base64-key...]`: the first key encrypts,
every listed key decrypts, so keys rotate by putting a new one first and dropping the old one
once no history needs it. Temporal's server and UI then see only ciphertext; operators who hold
the codec server's token see decrypted payloads in the UI.

A payload this codec cannot decrypt (unknown key id, bad tag, truncated) is passed on unchanged
and logged: the data converter then fails to read it where the SDK can cope, so a garbage signal
is dropped like any malformed signal instead of failing the workflow task on every replay. The
codec server uses `decode_strict`, which refuses it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec

from config.settings import parse_encryption_keys

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12

log = structlog.get_logger(__name__)


class UndecodablePayload(ValueError):
    """An encrypted payload no configured key opens (unknown key id, bad tag, truncated)."""


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._current = current

    @classmethod
    def from_setting(cls, value: str) -> EncryptionCodec:
        """Parse PAYLOAD_ENCRYPTION_KEY; ValueError naming what is wrong (never the key)."""
        keys = parse_encryption_keys(value)
        return cls(keys, current=next(iter(keys)))

    @property
    def current_key_id(self) -> str:
        """The id of the key that encrypts (the first of PAYLOAD_ENCRYPTION_KEY)."""
        return self._current

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self._current]
        encoded = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID: self._current.encode()},
                    data=nonce + cipher.encrypt(nonce, payload.SerializeToString(), None),
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt; an undecodable payload is logged and passed on as it is (see the module doc)."""
        decoded = []
        for payload in payloads:
            try:
                decoded.append(self._decrypt(payload))
            except UndecodablePayload as problem:
                log.warning("codec.undecodable_payload", reason=str(problem))
                decoded.append(payload)
        return decoded

    async def decode_strict(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt or raise UndecodablePayload (the codec server answers it with 400)."""
        return [self._decrypt(payload) for payload in payloads]

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UndecodablePayload(f"payload encrypted with unknown key id {key_id!r}")
        data = payload.data
        if len(data) <= NONCE_BYTES:
            raise UndecodablePayload(f"payload under key id {key_id!r} is too short to be ciphertext")
        try:
            return Payload.FromString(cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None))
        except InvalidTag:
            raise UndecodablePayload(f"payload under key id {key_id!r} fails its authentication tag") from None
        except DecodeError:
            raise UndecodablePayload(f"payload under key id {key_id!r} does not hold a payload") from None


def data_converter(encryption_key: str | None) -> DataConverter:
    """The pydantic converter, encrypted when a key is configured."""
    if not encryption_key:
        return pydantic_data_converter
    return dataclasses.replace(pydantic_data_converter, payload_codec=EncryptionCodec.from_setting(encryption_key))
