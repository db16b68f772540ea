"""Durable file writes shared by every layer: nothing half-written is ever read.

A file is written beside its target under a temporary name, flushed to disk, then renamed
over the target, and the directory entry is flushed too; a crash leaves either the old file
or the new one, and temporary names that `TMP_PREFIX` lets a sweep find.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable (best effort where directories can't sync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | np.ndarray) -> None:
    """Write `data` as the whole of `path` (an array as its raw bytes, without a copy: the
    template index writes gigabytes this way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, np.ndarray):
                data.tofile(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
