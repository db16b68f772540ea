"""Content-addressed file store for image and face-chip bytes.

Files live at `root/ab/cd/<sha256>`: the name is the hash of the content, so a write is
idempotent, two subjects sharing an image share one file, and a read can prove the bytes
are intact. Only 64-character lowercase hex strings ever become path components.
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

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")


def check_sha256(sha: str) -> str:
    """Return `sha` if it is 64 lowercase hex characters; refuse anything else."""
    if not isinstance(sha, str) or _SHA256.fullmatch(sha) is None:
        raise InvalidInputError("not a sha256 content address (64 lowercase hex characters)")
    return sha


class BlobStore:
    """Immutable blobs addressed by the sha256 of their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

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
        a real name, and idempotent. An existing file is re-hashed and replaced if damaged.
        `expect`, if given, must equal the hash of `data`.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError("blob data must be bytes")
        data = bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        if expect is not None and check_sha256(expect) != sha:
            raise InvalidInputError("content does not match its declared sha256")
        target = self.path(sha)
        if target.is_file() and self._hash_file(target) == sha:
            return sha
        write_atomic(target, data)
        return sha

    def get(self, sha: str) -> bytes:
        """The blob's bytes; NotFoundError if absent, StoreError if they fail their hash."""
        p = self.path(sha)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"blob {sha} not found") from None
        except OSError as e:
            raise StoreError(f"blob {sha} cannot be read: {e.strerror}") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise StoreError(f"blob {sha} is corrupt (content does not match its hash)")
        return data

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
    def _hash_file(path: Path) -> str:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
