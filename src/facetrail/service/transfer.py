"""Bulk export and import of templates: migrating a gallery from or to another system.

The file is a NumPy `.npz` archive (a zip of `.npy` arrays, read without pickle):

| array | shape, type | what |
|---|---|---|
| `format` | (), str | `facetrail-templates` |
| `version` | (), int | 1 |
| `model` | (), str | the id of the model the descriptors come from (as `enrol --json` says) |
| `descriptors` | (n, dim), float32 | one unit-length descriptor per row |
| `subjects` | (n,), str | the subject of each row (a person: one or more rows) |
| `references` | (n,), str | the subject's reference number (custody number...), "" if none |
| `image_sha256` | (n,), str | SHA-256 of the image the row was described from, "" if unknown |

Only `model`, `descriptors` and `subjects` are required of a file made elsewhere. Templates
of different models cannot be compared, so they are kept per model id: an import refuses a
file of another model than the configured one unless told that model's id on purpose (it is
then kept as that model's templates, searchable once that model is configured). Everything
is checked before anything is written (shapes, finite values, unit length, names) and the
import is one transaction: all rows or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from facetrail.errors import InvalidInputError, NotFoundError
from facetrail.files import write_atomic
from facetrail.store import Store, TemplateSet

# Appends the audit event of a transfer in the given transaction: (session, object ids,
# details); details are counts and hashes, never a descriptor.
TransferAudit = Callable[[Session, list[int], dict[str, Any]], None]

FORMAT = "facetrail-templates"
VERSION = 1
REQUIRED = ("model", "descriptors", "subjects")
# A descriptor is accepted as unit length within this much (float32 rounding of another
# system's normalisation), and then rescaled to unit length. Farther off is refused: it was
# not normalised, or not by this convention, and its scores would mean nothing.
UNIT_TOLERANCE = 1e-3
EXACT_UNIT = 1e-5  # float32 rounding of a unit vector's length
MAX_FILE_BYTES = 8 * 1024**3


@dataclass(frozen=True)
class TemplateFile:
    """A template file read and checked: its templates and the file's own SHA-256."""

    templates: TemplateSet
    sha256: str
    size: int


@dataclass(frozen=True)
class TransferReport:
    """What an export or import did (its JSON form is documented in the README)."""

    file: str
    sha256: str  # of the file
    model: str
    templates: int  # rows in the file
    subjects: int  # distinct subjects in the file
    added: int | None = None  # import: templates added
    duplicates: int | None = None  # import: rows the gallery already held, skipped
    created_subjects: int | None = None  # import: subjects that were new

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def export_templates(store: Store, path: Path, model: str, audit: TransferAudit) -> TransferReport:
    """Write every template of `model` to `path`, and audit it, together: the file is
    removed again if the audit event cannot be committed."""
    templates, _ = store.export_templates(model)
    if not len(templates):
        known = ", ".join(sorted(store.template_models())) or "none"
        raise NotFoundError(f"no templates of model {model!r} to export (models here: {known})")
    names = sorted(set(templates.subjects))
    subject_ids = sorted(store.subject_ids(names).values())
    written = False
    try:
        with store.session() as s:
            sha = write(path, templates)
            written = True
            details = {
                "model": model,
                "templates": len(templates),
                "subjects": len(names),
                "file": str(path),
                "sha256": sha,
            }
            audit(s, subject_ids, details)
    except BaseException:
        if written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return TransferReport(str(path), sha, model, len(templates), len(names))


def import_templates(
    store: Store, path: Path, model: str, dim: int | None, audit: TransferAudit
) -> TransferReport:
    """Add the templates of the file at `path` as templates of `model`, all or none, with
    the audit event in the same transaction; `dim`: the length `model`'s descriptors must
    have, where known."""
    found = read(path, model=model)
    templates = found.templates
    if dim is not None and templates.vectors.shape[1] != dim:
        raise InvalidInputError(
            f"{path.name}: descriptors have {templates.vectors.shape[1]} values, model "
            f"{model!r} makes {dim}"
        )
    with store.session() as s:
        done = store.import_templates(templates, session=s)
        details = {
            "model": model,
            "templates": len(templates),
            "added": done.added,
            "duplicates": done.duplicates,
            "subjects": len(done.subject_ids),
            "created_subjects": done.created_subjects,
            "file": path.name,
            "sha256": found.sha256,
        }
        audit(s, list(done.subject_ids), details)
    return TransferReport(
        str(path),
        found.sha256,
        model,
        len(templates),
        len(done.subject_ids),
        added=done.added,
        duplicates=done.duplicates,
        created_subjects=done.created_subjects,
    )


def write(path: Path, templates: TemplateSet) -> str:
    """Write `templates` to `path` (atomically, private to its owner); returns its SHA-256."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format=np.array(FORMAT),
        version=np.array(VERSION),
        model=np.array(templates.model),
        descriptors=np.ascontiguousarray(templates.vectors, dtype=np.float32),
        subjects=_strings(templates.subjects),
        references=_strings(r or "" for r in templates.references),
        image_sha256=_strings(s or "" for s in templates.image_sha256),
    )
    data = buffer.getvalue()
    write_atomic(path, data)  # mkstemp: mode 0600, biometric data
    return hashlib.sha256(data).hexdigest()


def _strings(values: object) -> np.ndarray:
    out = np.array(list(values), dtype=np.str_)  # type: ignore[call-overload]
    return out if out.size else np.zeros(0, dtype="<U1")


def read(path: Path, *, model: str) -> TemplateFile:
    """Read and check a template file for import as templates of `model`.

    InvalidInputError, saying what is wrong, for a file that is not a template file, is
    truncated, holds templates of another model, or any row that is malformed."""
    name = path.name
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidInputError(f"{name}: larger than {MAX_FILE_BYTES} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"{name}: cannot read it ({e.strerror or e})") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            missing = [k for k in REQUIRED if k not in archive.files]
            if missing:
                raise InvalidInputError(f"{name}: not a template file (no {', '.join(missing)})")
            arrays = {k: archive[k] for k in archive.files}
    except InvalidInputError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        # np.load raises these for truncated or damaged archives, and ValueError for an
        # array that would need pickle (an object array): refused, never unpickled.
        raise InvalidInputError(f"{name}: not a readable template file ({e})") from None
    if "format" in arrays and str(arrays["format"]) != FORMAT:
        raise InvalidInputError(f"{name}: format {str(arrays['format'])!r}, not {FORMAT!r}")
    if "version" in arrays and int(np.asarray(arrays["version"]).ravel()[0]) != VERSION:
        raise InvalidInputError(f"{name}: version {arrays['version']}, this facetrail reads 1")
    stated = arrays["model"]
    if stated.ndim != 0 or stated.dtype.kind != "U" or not str(stated).strip():
        raise InvalidInputError(f"{name}: `model` must be the model id, one string")
    found = str(stated)
    if found != model:
        raise InvalidInputError(
            f"{name}: holds templates of model {found!r}, not {model!r}; templates are kept "
            f"per model: to keep these as {found!r}'s, say so (--model {found})"
        )
    vectors = _descriptors(name, arrays["descriptors"])
    n = vectors.shape[0]
    subjects = _column(name, arrays, "subjects", n, required=True)
    references = _column(name, arrays, "references", n)
    shas = _column(name, arrays, "image_sha256", n)
    bad = [i for i, s in enumerate(shas) if s and not _is_sha256(s)]
    if bad:
        raise InvalidInputError(f"{name}: row {bad[0]}: image_sha256 is not a SHA-256 in hex")
    templates = TemplateSet(
        model=model,
        subjects=tuple(s.strip() for s in subjects),  # type: ignore[union-attr]
        references=tuple(r.strip() or None if r else None for r in references),
        image_sha256=tuple(s.lower() or None if s else None for s in shas),
        vectors=vectors,
    )
    empty = [i for i, s in enumerate(templates.subjects) if not s]
    if empty:
        raise InvalidInputError(f"{name}: row {empty[0]}: no subject name")
    return TemplateFile(templates, hashlib.sha256(data).hexdigest(), len(data))


def _descriptors(name: str, array: np.ndarray) -> np.ndarray:
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(
            f"{name}: descriptors must be a 2-d array, one row per template (got shape "
            f"{tuple(array.shape)})"
        )
    if array.dtype.kind != "f":
        raise InvalidInputError(f"{name}: descriptors must be floats, not {array.dtype}")
    vectors = array.astype(np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise InvalidInputError(
            f"{name}: row {int(np.argmin(finite))}: descriptor has values that are not finite"
        )
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise InvalidInputError(
            f"{name}: row {i}: descriptor has length {norms[i]:.4g}, not 1 (templates are unit "
            "vectors: normalise them, with the model's own convention, before import)"
        )
    # Rows unit to float32 rounding are kept bit for bit (an export imports as exactly what
    # it was, and re-importing recognises the rows it already holds); the others are rescaled.
    rescale = np.abs(norms - 1.0) > EXACT_UNIT
    vectors[rescale] = (vectors[rescale] / norms[rescale, None]).astype(np.float32)
    return vectors


def _column(
    name: str, arrays: dict[str, np.ndarray], key: str, n: int, *, required: bool = False
) -> list[str | None]:
    if key not in arrays:
        if required:  # pragma: no cover - checked with REQUIRED
            raise InvalidInputError(f"{name}: no {key}")
        return [None] * n
    column = arrays[key]
    if column.ndim != 1 or column.dtype.kind != "U":
        raise InvalidInputError(f"{name}: {key} must be a 1-d array of strings")
    if column.shape[0] != n:
        raise InvalidInputError(f"{name}: {column.shape[0]} {key} for {n} descriptors")
    return [str(v) for v in column]


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)
