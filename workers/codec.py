"""Optional payload encryption (AES-GCM) for everything that passes through Temporal.

PAYLOAD_ENCRYPTION_KEY is `key-id:base64-key[,old-id:base64-key...]`: the first key encrypts,
every listed key decrypts, so keys rotate by putting a new one first and dropping the old one
once no history needs it. Temporal's server and UI then see only ciphertext; operators who hold
the codec server's token see decrypted payloads in the UI.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._current = current

    @classmethod
    def from_setting(cls, value: str) -> EncryptionCodec:
        """Parse PAYLOAD_ENCRYPTION_KEY; ValueError naming what is wrong (never the key)."""
        keys: dict[str, bytes] = {}
        for part in (p.strip() for p in value.split(",") if p.strip()):
            key_id, sep, encoded = part.partition(":")
            if not sep or not key_id:
                raise ValueError("entries must be key-id:base64-key")
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"key {key_id!r} is not base64") from None
            if len(key) not in (16, 24, 32):
                raise ValueError(f"key {key_id!r} must be 16, 24 or 32 bytes")
            keys[key_id] = key
        if not keys:
            raise ValueError("no key given")
        return cls(keys, current=next(iter(keys)))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self._current]
        encoded = []
        for payload in payloads:
            nonce = os.urandom(12)
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID: self._current.encode()},
                    data=nonce + cipher.encrypt(nonce, payload.SerializeToString(), None),
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)
                continue
            key_id = payload.metadata.get(KEY_ID, b"").decode()
            cipher = self._ciphers.get(key_id)
            if cipher is None:
                raise ValueError(f"payload encrypted with unknown key id {key_id!r}")
            data = payload.data
            decoded.append(Payload.FromString(cipher.decrypt(data[:12], data[12:], None)))
        return decoded


def data_converter(encryption_key: str | None) -> DataConverter:
    """The pydantic converter, encrypted when a key is configured."""
    if not encryption_key:
        return pydantic_data_converter
    return dataclasses.replace(pydantic_data_converter, payload_codec=EncryptionCodec.from_setting(encryption_key))
