"""The bias report: one self-contained HTML page from the JSON that `eval bias` wrote.

Everything the page shows comes from that JSON (the chart is drawn again from its curves and
embedded as a base64 PNG), so the page and the JSON cannot disagree, and the page can be
mailed, archived or printed to PDF without the files beside it. Numbers are formatted by the
filters of `reports.common` and nowhere else: `rate` (3 significant digits), `score` (4 decimals).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from facetrail.errors import InvalidInputError
from facetrail.reports.common import environment

_REQUIRED = ("attribute", "threshold", "groups", "fmr_ratio", "fnmr_ratio", "target", "bootstrap")


def load_results(path: Path) -> dict[str, Any]:
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path.name} is not JSON") from exc
    missing = [k for k in _REQUIRED if not isinstance(results, dict) or k not in results]
    if missing:
        raise InvalidInputError(
            f"{path.name} is not the result of `facetrail eval bias` (missing {', '.join(missing)})"
        )
    return results


def render_bias_report(results: dict[str, Any]) -> str:
    from facetrail.evaluation.runs import bias_det_chart  # matplotlib: only when drawing

    chart = base64.b64encode(bias_det_chart(results)).decode("ascii")
    return environment().get_template("bias.html").render(r=results, det_png=chart)


def write_bias_report(results_path: Path, out: Path | None = None) -> Path:
    from facetrail.files import write_atomic

    html = render_bias_report(load_results(results_path))
    target = out if out is not None else results_path.with_suffix(".html")
    write_atomic(target, html.encode("utf-8"))
    return target
