"""The policy: the rules an administrator sets for everyone, kept in the database.

Settings (the configuration file and environment) say how this installation runs; policy says
what users may do with it, so it lives with the data, changes only through `policy set` by an
admin, and every change is an audit event with the old and new values.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from facetrail.errors import InvalidInputError
from facetrail.service.tables import PolicySetting
from facetrail.store.models import utcnow


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Searches at a threshold whose estimated false match rate is above this need an
    # authoriser's approval in the case; `threshold_floor`, if set, is used instead (models
    # without a calibration).
    floor_fmr: float = Field(1e-3, gt=0, lt=1)
    threshold_floor: float | None = Field(None, ge=-1, le=1)
    # Searching the whole gallery rather than an authorised watchlist needs approval.
    gallery_search_needs_approval: bool = True
    approval_days: int = Field(7, ge=1, le=366)
    watchlist_max_days: int = Field(92, ge=1, le=3660)
    # Retention. Probe faces that matched nothing are deleted when the search completes
    # unless this is true; probe media and results go `probe_retention_days` after the case
    # closes; subjects are erased at their review date unless an authoriser renews them.
    keep_unmatched_probe_faces: bool = False
    probe_retention_days: int = Field(31, ge=0, le=36500)
    subject_review_days: int = Field(6 * 365, ge=1, le=36500)
    # Live alerts (their rows and best shots) are deleted this many hours after they were
    # raised; faces that matched nothing in a live deployment are never stored at all.
    alert_retention_hours: int = Field(24, ge=0, le=8760)
    # Whether `cohort build --closed-cases` may keep, as score-normalisation cohort, the
    # descriptors of probe faces of closed cases that review found to be nobody in the gallery
    # (descriptors only, after the probes themselves are purged). Off unless the force's
    # data-protection assessment allows it.
    cohort_from_closed_cases: bool = False
    # Accounts.
    token_days: int = Field(30, ge=1, le=366)
    min_password_length: int = Field(12, ge=8, le=256)


def load(s: Session) -> Policy:
    stored = {row.key: row.value for row in s.scalars(select(PolicySetting))}
    known = {k: v for k, v in stored.items() if k in Policy.model_fields}
    return Policy(**known)


def parse_value(key: str, raw: Any) -> Any:
    """`raw` (a command-line string, or a Python value) checked against `key`'s type."""
    if key not in Policy.model_fields:
        keys = ", ".join(Policy.model_fields)
        raise InvalidInputError(f"unknown policy setting {key!r}; the settings are: {keys}")
    value = raw
    if isinstance(raw, str) and raw.strip().lower() in ("none", "null", ""):
        value = None
    try:
        return getattr(Policy.model_validate({key: value}), key)
    except ValidationError as e:
        problem = e.errors()[0]["msg"]
        raise InvalidInputError(f"policy {key}: {problem}") from None


def save(s: Session, key: str, value: Any, by: str) -> tuple[Any, Any]:
    """Set one value in the caller's transaction; returns (old, new)."""
    new = parse_value(key, value)
    old = getattr(load(s), key)
    row = s.get(PolicySetting, key)
    if row is None:
        s.add(PolicySetting(key=key, value=new, changed_by=by, changed_at=utcnow()))
    else:
        row.value, row.changed_by, row.changed_at = new, by, utcnow()
    s.flush()
    return old, new
