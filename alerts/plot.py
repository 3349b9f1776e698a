"""One chart per alerted key: negative share vs baseline, volume, and alert spans (PNG or HTML)."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from alerts.detector import WindowStat
from alerts.model import Alert, rfc3339


def _png_bytes(key_id: str, series: Sequence[WindowStat], alerts: Sequence[Alert]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [datetime.fromtimestamp(s.window_start, tz=UTC) for s in series]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, height_ratios=[2, 1])
    try:
        ax1.plot(xs, [s.negative_share for s in series], label="negative share", color="tab:red")
        ax1.plot(xs, [s.baseline_share for s in series], label="baseline", color="tab:gray", linestyle="--")
        width = (series[0].window_end - series[0].window_start) / 86400 * 0.8 if series else 0.0
        ax2.bar(
            xs,
            [s.count for s in series],
            width=width,
            align="edge",
            color="tab:blue",
            alpha=0.3,
            label="messages",
        )
        ax2.plot(xs, [s.negative_count for s in series], color="tab:red", label="negative")
        ax2.plot(xs, [s.expected_negative for s in series], color="tab:gray", linestyle="--", label="usual")
        end = xs[-1] if xs else None
        for a in alerts:
            start = datetime.fromtimestamp(a.starts_at, tz=UTC)
            stop = datetime.fromtimestamp(a.ends_at, tz=UTC) if a.ends_at is not None else end
            color = "tab:orange" if a.rule == "negative_share" else "tab:purple"
            for ax in (ax1, ax2):
                ax.axvspan(start, stop or start, color=color, alpha=0.2)
        ax1.set_ylabel("share")
        ax1.set_ylim(0, 1)
        ax1.legend(loc="upper left")
        ax2.set_ylabel("messages / window")
        ax2.legend(loc="upper left")
        ax1.set_title(f"{key_id}: orange = share alert, purple = volume alert")
        fig.autofmt_xdate()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()
    finally:
        plt.close(fig)


def safe_name(key_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key_id)[:100] or "key"


def write_plot(
    out_dir: Path, key_id: str, series: Sequence[WindowStat], alerts: Sequence[Alert], fmt: str = "png"
) -> Path:
    """Write `<out_dir>/<key>.png` (or .html with the PNG inline and an alert table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = _png_bytes(key_id, series, alerts)
    if fmt == "png":
        path = out_dir / f"{safe_name(key_id)}.png"
        path.write_bytes(png)
        return path
    rows = "".join(
        f"<tr><td>{html.escape(a.rule)}</td><td>{html.escape(a.severity)}</td>"
        f"<td>{rfc3339(a.starts_at)}</td><td>{rfc3339(a.ends_at) or 'firing'}</td>"
        f"<td>{html.escape(a.summary)}</td></tr>"
        for a in alerts
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(key_id)}</title></head><body>"
        f"<h1>{html.escape(key_id)}</h1><img alt='chart' src='data:image/png;base64,"
        f"{base64.b64encode(png).decode()}'><table border='1'>"
        f"<tr><th>rule</th><th>severity</th><th>start</th><th>end</th><th>summary</th></tr>{rows}</table></body></html>"
    )
    path = out_dir / f"{safe_name(key_id)}.html"
    path.write_text(page, encoding="utf-8")
    return path
