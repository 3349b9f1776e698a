"""One chart per alerted key: negative share vs baseline, volume, and alert spans (PNG or HTML)."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from alerts.detector import WindowStat
from alerts.model import Alert, rfc3339, utc_datetime
from alerts.notifiers.render import summary_text


def _png_bytes(key_id: str, series: Sequence[WindowStat], alerts: Sequence[Alert]) -> bytes:
    import matplotlib.pyplot as plt

    fig = figure(key_id, series, alerts)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()
    finally:
        plt.close(fig)


def figure(key_id: str, series: Sequence[WindowStat], alerts: Sequence[Alert]) -> Any:
    """The chart as a matplotlib Figure (imported here: matplotlib is an extra); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, points = with_gaps(series)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, height_ratios=[2, 1])
    try:
        ax1.plot(xs, [p.share for p in points], label="negative share", color="tab:red")
        ax1.plot(xs, [p.baseline for p in points], label="baseline", color="tab:gray", linestyle="--")
        width = (series[0].window_end - series[0].window_start) / 86400 * 0.8 if series else 0.0
        ax2.bar(
            [utc_datetime(s.window_start) for s in series],
            [s.count for s in series],
            width=width,
            align="edge",
            color="tab:blue",
            alpha=0.3,
            label="messages",
        )
        ax2.plot(xs, [p.negative for p in points], color="tab:red", label="negative")
        ax2.plot(xs, [p.expected for p in points], color="tab:gray", linestyle="--", label="usual")
        for a in alerts:
            start, stop = alert_span(a, series)
            color = "tab:orange" if a.rule == "negative_share" else "tab:purple"
            for ax in (ax1, ax2):
                ax.axvspan(start, stop, color=color, alpha=0.2)
        ax1.set_ylabel("share")
        ax1.set_ylim(0, 1)
        ax1.legend(loc="upper left")
        ax2.set_ylabel("messages / window")
        ax2.set_xlabel("window start (UTC)")
        ax2.legend(loc="upper left")
        ax1.set_title(f"{key_id}: orange = share alert, purple = volume alert")
        fig.autofmt_xdate()
    except Exception:
        plt.close(fig)
        raise
    return fig


@dataclass(frozen=True, slots=True)
class Point:
    """The plotted values of one window (NaN: a gap, where the lines break)."""

    share: float
    baseline: float
    negative: float
    expected: float


GAP = Point(math.nan, math.nan, math.nan, math.nan)


def with_gaps(series: Sequence[WindowStat]) -> tuple[list[datetime], list[Point]]:
    """The series' points by window start, with a NaN point after each window that the next one does not
    follow directly: the key had no messages in between, and a line joining across would invent values."""
    xs: list[datetime] = []
    points: list[Point] = []
    for i, s in enumerate(series):
        if i and s.window_start > series[i - 1].window_end:
            xs.append(utc_datetime(series[i - 1].window_end))
            points.append(GAP)
        xs.append(utc_datetime(s.window_start))
        points.append(Point(s.negative_share, s.baseline_share, s.negative_count, s.expected_negative))
    return xs, points


def alert_span(alert: Alert, series: Sequence[WindowStat]) -> tuple[datetime, datetime]:
    """From the alert's start to its resolve or, still firing, to the end of the last window drawn (or
    of its own evidence): a window start would give an alert of the last window no width at all."""
    if alert.ends_at is not None:
        stop = alert.ends_at
    else:
        stop = max([alert.window_end, *(s.window_end for s in series[-1:])])
    return utc_datetime(alert.starts_at), utc_datetime(stop)


def safe_name(key_id: str) -> str:
    """A file name for the key: readable, plus a short hash of the key itself, so that keys that read the
    same once cleaned up (`ticker:A/B`, `ticker:A_B`) or cut at 100 characters get charts of their own."""
    digest = hashlib.sha256(key_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', key_id)[:100] or 'key'}-{digest}"


def write_plot(
    out_dir: Path, key_id: str, series: Sequence[WindowStat], alerts: Sequence[Alert], fmt: str = "png"
) -> Path:
    """Write `<out_dir>/<safe_name(key)>.png` (or .html with the PNG inline and an alert table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = _png_bytes(key_id, series, alerts)
    if fmt == "png":
        path = out_dir / f"{safe_name(key_id)}.png"
        path.write_bytes(png)
        return path
    rows = "".join(
        f"<tr><td>{html.escape(a.rule)}</td><td>{html.escape(a.severity)}</td>"
        f"<td>{rfc3339(a.starts_at)}</td><td>{rfc3339(a.ends_at) or 'firing'}</td>"
        f"<td>{html.escape(summary_text(a))}</td></tr>"
        for a in alerts
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(key_id)}</title></head><body>"
        f"<h1>{html.escape(key_id)}</h1><img alt='chart' src='data:image/png;base64,"
        f"{base64.b64encode(png).decode()}'><table border='1'>"
        "<tr><th>rule</th><th>severity</th><th>start (UTC)</th><th>end (UTC)</th><th>summary</th></tr>"
        f"{rows}</table></body></html>"
    )
    path = out_dir / f"{safe_name(key_id)}.html"
    path.write_text(page, encoding="utf-8")
    return path
