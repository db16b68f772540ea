"""What the case and transparency reports share: the Jinja environment and the number formats.

A report's HTML and its JSON are both made from one dataclass, and every number the page
shows goes through one of the filters below, so a test (or a reader) can format the JSON's
value with the same function and find exactly the text on the page. The bias report keeps its
own environment (reports/bias.py) and output; the rate and score formats are its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import date, datetime
from pathlib import PurePosixPath
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


def format_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def format_score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_interval(bounds: list[float] | None) -> str:
    return "n/a" if bounds is None else f"{format_rate(bounds[0])} – {format_rate(bounds[1])}"


def format_count(value: int | None) -> str:
    """A count with thousands separators (3,100,000: the way the figures are published)."""
    return "n/a" if value is None else f"{value:,}"


def format_percent(value: float | None) -> str:
    """A share as a percentage with two significant digits and no exponent (0.00032%):
    a false alert rate is a tiny number people must read without a calculator."""
    if value is None:
        return "n/a"
    percent = value * 100
    if percent == 0:
        return "0%"
    decimals = max(0, 1 - math.floor(math.log10(abs(percent))))
    return f"{percent:.{decimals}f}%"


def format_one_in(value: float | None) -> str:
    """A share as "1 in N" (N rounded to two significant digits), "none" for zero."""
    if value is None:
        return "n/a"
    if value == 0:
        return "none"
    n = 1 / value
    digits = max(0, math.floor(math.log10(n)) - 1)
    return f"1 in {round(n, -digits):,.0f}"


def format_duration(seconds: float | None) -> str:
    """Hours and minutes (a deployment's length)."""
    if seconds is None:
        return "n/a"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"


def format_fmr(value: float | None) -> str:
    """A candidate's estimated false match rate (None: the model had no calibration)."""
    return "not calibrated" if value is None else format_rate(value)


def basename(value: str) -> str:
    """A probe's file name without its folder (the inputs table gives the whole name)."""
    return PurePosixPath(value).name or value


def compact(value: Any) -> str:
    """An audit event's details as one line of JSON, keys sorted (what the trail holds)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("facetrail.reports", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        rate=format_rate,
        score=format_score,
        interval=format_interval,
        count=format_count,
        percent=format_percent,
        one_in=format_one_in,
        duration=format_duration,
        when=format_when,
        fmr=format_fmr,
        compact=compact,
        basename=basename,
    )
    return env


def plain(value: Any) -> Any:
    """A report dataclass as JSON-ready values: times as ISO 8601 with their offset."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("json", True)
        }
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value
