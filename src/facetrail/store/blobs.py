"""Content-addressed file store for image and face-chip bytes.

Files live at `root/ab/cd/<sha256>`: the name is the hash of the content, so a write is
idempotent, two subjects sharing an image share one file, and a read can prove the bytes
are intact. Only 64-character lowercase hex strings ever become path components.

With a `Cipher` the files hold sealed bytes (see `crypto`), still named by the hash of the
plaintext, since that is what the database and the audit trail refer to. Plain files written
before a key was configured stay readable, and `seal_existing` converts them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from facetrail.errors import InvalidInputError, NotFoundError, StoreError
from facetrail.files import TMP_PREFIX, fsync_dir, write_atomic
from facetrail.store.crypto import KEY_HINT, OVERHEAD, Cipher, is_sealed, not_configured

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")


def check_sha256(sha: str) -> str:
    """Return `sha` if it is 64 lowercase hex characters; refuse anything else."""
    if not isinstance(sha, str) or _SHA256.fullmatch(sha) is None:
        raise InvalidInputError("not a sha256 content address (64 lowercase hex characters)")
    return sha


class BlobStore:
    """Immutable blobs addressed by the sha256 of their (plaintext) bytes."""

    def __init__(self, root: Path, cipher: Cipher | None = None) -> None:
        self.root = Path(root)
        self._cipher = cipher

    @property
    def encrypted(self) -> bool:
        """Whether new blobs are written sealed."""
        return self._cipher is not None

    @staticmethod
    def context(sha: str) -> bytes:
        """The associated data that binds a sealed blob to its content address."""
        return b"blob:" + sha.encode("ascii")

    def path(self, sha: str) -> Path:
        """Where the blob with this hash lives (whether or not it exists)."""
        check_sha256(sha)
        return self.root / sha[:2] / sha[2:4] / sha

    def exists(self, sha: str) -> bool:
        """Whether a blob with this hash is stored."""
        return self.path(sha).is_file()

    def put(self, data: bytes, *, expect: str | None = None) -> str:
        """Store `data` and return its sha256.

        Atomic (temporary file, fsync, rename) so a crash never leaves a partial blob under
        a real name, and idempotent. An existing file is checked against the hash of its
        plaintext and replaced if damaged, or if it is plain and this store seals. Without a
        key, an existing sealed file cannot be checked and StoreError says a key is needed
        (rewriting it in plain would undo its encryption). `expect`, if given, must equal the
        hash of `data`.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError("blob data must be bytes")
        data = bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        if expect is not None and check_sha256(expect) != sha:
            raise InvalidInputError("content does not match its declared sha256")
        target = self.path(sha)
        if self._cipher is None:
            if target.is_file() and self._hash_file(target) == sha:
                return sha
            if target.is_file() and self._starts_sealed(target):
                raise not_configured(f"blob {sha}")
            write_atomic(target, data)
            return sha
        if target.is_file() and self._sealed_intact(target, sha):
            return sha
        write_atomic(target, self._cipher.seal(data, self.context(sha)))
        return sha

    def _sealed_intact(self, target: Path, sha: str) -> bool:
        """Whether `target` holds the blob `sha` sealed with this store's key."""
        assert self._cipher is not None
        raw = target.read_bytes()
        if not is_sealed(raw):
            return False
        try:
            plain = self._cipher.open(raw, self.context(sha), what=f"blob {sha}")
        except StoreError:
            return False  # damaged, or sealed under another key: the new copy replaces it
        return hashlib.sha256(plain).hexdigest() == sha

    def get(self, sha: str) -> bytes:
        """The blob's plaintext bytes.

        NotFoundError if absent; StoreError if they fail their hash, cannot be decrypted, or
        are sealed and no key is configured. Plain files (from before a key) are read as is.
        """
        raw = self._read(sha)
        if is_sealed(raw):
            try:
                if self._cipher is None:
                    raise not_configured(f"blob {sha}")
                data = self._cipher.open(raw, self.context(sha), what=f"blob {sha}")
            except StoreError:
                if hashlib.sha256(raw).hexdigest() == sha:
                    return raw  # plaintext that merely starts like sealed data
                raise
        else:
            data = raw
        if hashlib.sha256(data).hexdigest() != sha:
            raise StoreError(f"blob {sha} is corrupt (content does not match its hash)")
        return data

    def seal_existing(self, sha: str) -> bool:
        """Rewrite a plain blob file in sealed form (atomically); True if it was plain.

        Files that fail their hash are sealed as they are: `get` still reports them corrupt,
        and their bytes no longer lie on disk in the clear.
        """
        if self._cipher is None:
            raise InvalidInputError(f"no encryption key configured ({KEY_HINT})")
        raw = self._read(sha)
        if is_sealed(raw) and hashlib.sha256(raw).hexdigest() != sha:
            return False
        write_atomic(self.path(sha), self._cipher.seal(raw, self.context(sha)))
        return True

    def _read(self, sha: str) -> bytes:
        p = self.path(sha)
        try:
            return p.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"blob {sha} not found") from None
        except OSError as e:
            raise StoreError(f"blob {sha} cannot be read: {e.strerror}") from None

    def delete(self, sha: str) -> bool:
        """Remove the blob; True if it existed."""
        p = self.path(sha)
        try:
            p.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(p.parent)
        return True

    def iter_hashes(self) -> Iterator[str]:
        """Every stored blob's hash, in no particular order (temporary files excluded)."""
        if not self.root.is_dir():
            return
        for d1 in os.scandir(self.root):
            if not (d1.is_dir(follow_symlinks=False) and _HEX2.fullmatch(d1.name)):
                continue
            for d2 in os.scandir(d1.path):
                if not (d2.is_dir(follow_symlinks=False) and _HEX2.fullmatch(d2.name)):
                    continue
                prefix = d1.name + d2.name
                for f in os.scandir(d2.path):
                    if (
                        f.is_file(follow_symlinks=False)
                        and _SHA256.fullmatch(f.name)
                        and f.name.startswith(prefix)
                    ):
                        yield f.name

    def remove_temporary_files(self) -> int:
        """Delete temporary files a crashed `put` left behind; returns how many.

        Only safe while no `put` is running, which `Store` ensures by holding its write lock.
        """
        removed = 0
        if not self.root.is_dir():
            return 0
        for tmp in self.root.glob(f"??/??/{TMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
        return removed

    @staticmethod
    def _starts_sealed(path: Path) -> bool:
        with path.open("rb") as f:
            return is_sealed(f.read(OVERHEAD))

    @staticmethod
    def _hash_file(path: Path) -> str:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
