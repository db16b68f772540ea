"""Charts of evaluation results as PNG bytes (matplotlib, Agg: no display needed).

They are drawn from the results' curves (dataclasses or their JSON form alike), so a report
made later from the JSON shows exactly the chart the evaluation wrote.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display

import matplotlib.pyplot as plt
import numpy as np

_SIZE = (6.4, 4.8)
_DPI = 110


def _xy(curve: Any) -> tuple[np.ndarray, np.ndarray]:
    data = curve if isinstance(curve, Mapping) else vars(curve)
    x = np.array([np.nan if v is None else v for v in data["x"]], np.float64)
    y = np.array([np.nan if v is None else v for v in data["y"]], np.float64)
    return x, y


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def cmc_chart(curve: Any, title: str = "CMC (mated probes)") -> bytes:
    x, y = _xy(curve)
    fig, ax = plt.subplots(figsize=_SIZE)
    ax.step(x, y, where="post", color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("rank k")
    ax.set_ylabel("identification rate (mate within the first k)")
    ax.set_ylim(max(0.0, float(np.nanmin(y)) - 0.05) if len(y) else 0.0, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    return _png(fig)


def det_chart(
    curves: Mapping[str, Any],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    points: Sequence[tuple[float, float, str]] = (),
) -> bytes:
    """One or more DET curves (error against error, log-log); `points`: marked operating
    points (x, y, label). Zero rates cannot sit on a log axis and are left out of the line."""
    fig, ax = plt.subplots(figsize=_SIZE)
    for label, curve in curves.items():
        x, y = _xy(curve)
        keep = (x > 0) & (y > 0)
        if keep.any():
            order = np.argsort(x[keep])
            ax.step(x[keep][order], y[keep][order], where="post", label=label)
    for x, y, label in points:
        if x > 0 and y > 0:
            ax.plot([x], [y], "o", color="black")
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    return _png(fig)
