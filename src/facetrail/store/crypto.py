"""Encryption at rest of face images, chips and templates (AES-256-GCM).

A sealed value is `MAGIC + nonce + ciphertext + tag`. The nonce is 12 random bytes per value:
random 96-bit nonces stay safe for far more values than a gallery holds (NIST's 2**32 bound
for one key). Every value is sealed with a `context` (the AEAD's associated data) naming what
it is, so a sealed template cannot be passed off as an image blob or one blob as another.

Messages never carry key bytes or plaintext, only what was being opened and why it failed.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from facetrail.errors import InvalidInputError, StoreError
from facetrail.files import fsync_dir

MAGIC = b"FTE1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + NONCE_BYTES
OVERHEAD = HEADER_BYTES + TAG_BYTES  # sealed size = plaintext size + OVERHEAD

KEY_HINT = "set FACETRAIL_ENCRYPTION_KEY or encryption_key_file"


def is_sealed(data: bytes | bytearray | memoryview) -> bool:
    """Whether `data` has the sealed format's header and room for a tag.

    Only a format check: plaintext that happens to start with MAGIC passes it too, so callers
    that can tell otherwise (a content hash, an expected size) still do.
    """
    return len(data) >= OVERHEAD and bytes(data[: len(MAGIC)]) == MAGIC


def check_key(key: object) -> bytes:
    """Return `key` as bytes if it is a 32-byte AES-256 key; refuse anything else."""
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise InvalidInputError(f"an encryption key must be {KEY_BYTES} bytes (AES-256)")
    return bytes(key)


def not_configured(what: str) -> StoreError:
    """The error for sealed data met by a handle that has no key."""
    return StoreError(f"{what} is encrypted: configure the encryption key ({KEY_HINT})")


class Cipher:
    """AES-256-GCM sealing with one key; one AESGCM object serves every call."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(check_key(key))

    def __repr__(self) -> str:
        return "Cipher(AES-256-GCM)"  # never the key

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """Encrypt and authenticate `plaintext`, bound to `context`."""
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, bytes(plaintext), MAGIC + context)

    def open(self, sealed: bytes, context: bytes, *, what: str | None = None) -> bytes:
        """The plaintext of `sealed`; StoreError if the key or the bytes are not the right ones.

        `what` names the value in the error (the context by default).
        """
        return self.open_many([sealed], context, what=what)[0]

    def open_many(
        self, items: Sequence[bytes], context: bytes, *, what: str | None = None
    ) -> list[bytes]:
        """The plaintexts of many values sealed with one context, in order.

        The hot path of template reads: one header check over all items, then one decrypt
        call per item and nothing else.
        """
        aad = MAGIC + context
        magic = len(MAGIC)
        if any(len(b) < OVERHEAD for b in items) or {b[:magic] for b in items} - {MAGIC}:
            raise StoreError(f"cannot decrypt {self._name(what, context)}: not sealed data")
        decrypt = self._aead.decrypt
        try:
            return [decrypt(b[magic:HEADER_BYTES], b[HEADER_BYTES:], aad) for b in items]
        except InvalidTag:
            raise StoreError(
                f"cannot decrypt {self._name(what, context)}: wrong key or damaged data"
            ) from None

    @staticmethod
    def _name(what: str | None, context: bytes) -> str:
        return what if what is not None else context.decode("ascii", "replace")


def generate_key_file(path: Path) -> None:
    """Write a new random key to `path` as urlsafe-base64 text, readable by its owner only.

    Refuses to overwrite: replacing a key file makes everything sealed with it unreadable.
    """
    path = Path(path)
    key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInputError(f"key file {path} already exists; not overwriting it") from None
    except OSError as e:
        raise InvalidInputError(f"cannot create key file {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # POSIX: 0600 whatever the umask did
                os.fchmod(f.fileno(), 0o600)
            f.write(base64.urlsafe_b64encode(key) + b"\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        with contextlib.suppress(OSError):
            path.unlink()
        if isinstance(e, OSError):
            raise InvalidInputError(f"cannot write key file {path}: {e.strerror}") from None
        raise
    fsync_dir(path.parent)
