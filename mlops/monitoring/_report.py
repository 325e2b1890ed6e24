"""Drift per column and over time, as data (`--json`) and as a self-contained HTML page with PNGs."""

from __future__ import annotations

import base64
import html
import io
import math
import time
from pathlib import Path
from typing import Any

from mlops.monitoring._profiler import Profiler
from mlops.monitoring._traffic import windows
from mlops.recipe.schema import DriftConfig


def drift_history(profiler: Profiler, reference: Any, window_dir: Path, columns: list[str], cfg: DriftConfig
                  ) -> list[dict[str, Any]]:
    """One entry per stored window, oldest first: rows and each column's score and category."""
    out = []
    for start, path in windows(window_dir):
        # One window that cannot be read or scored is reported and skipped; the others still score.
        try:
            current = profiler.read(path)
            rows = profiler.rows(current)
            scores = profiler.drift(reference, current, columns, cfg)
        except Exception as exc:  # a corrupt or unscorable window must not hide every other window
            out.append({"window": start, "rows": None, "skipped": f"{type(exc).__name__}: {exc}",
                        "columns": {c: {"score": None, "category": "NO_VERDICT"} for c in columns}, "drift": []})
            continue
        entry: dict[str, Any] = {
            "window": start,
            "rows": rows,
            "columns": {c: {"score": d.score, "category": d.category, **({"reason": d.reason} if d.reason else {})}
                        for c, d in scores.items()},
            "drift": sorted(c for c, d in scores.items() if d.category == "DRIFT"),
        }
        unusable = sorted(c for c, d in scores.items() if d.reason.startswith("non-finite"))
        if unusable:
            entry["non_finite"] = unusable  # garbage in the window: its own signal, never counted as drift
        out.append(entry)
    return out


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render_html(title: str, profiler: Profiler, reference: Any, latest: Any | None, history: list[dict[str, Any]],
                columns: list[str], cfg: DriftConfig) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;margin:2em} td,th{padding:4px 10px;text-align:left}"
             ".DRIFT{color:#b00;font-weight:bold}.POSSIBLE_DRIFT{color:#c70}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Hellinger distance per column, latest window against the training data's reference profile. "
             f"POSSIBLE_DRIFT from {cfg.possible}, DRIFT from {cfg.drift} (monitoring.drift.*); windows under "
             f"{cfg.min_window_rows} rows get no verdict.</p>"]
    if history:
        last = history[-1]
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last["window"]))
        parts.append(f"<h2>Latest window: {when}, {last['rows']} rows</h2><table><tr><th>column</th>"
                     "<th>score</th><th>verdict</th></tr>")
        for c in columns:
            d = last["columns"][c]
            score = "–" if d["score"] is None else f"{d['score']:.3f}"
            parts.append(f"<tr><td>{html.escape(c)}</td><td>{score}</td><td class='{d['category']}'>"
                         f"{d['category']}</td></tr>")
        parts.append("</table>")
        fig, ax = plt.subplots(figsize=(8, 3))
        for c in columns:
            ys = [h["columns"][c]["score"] for h in history]
            ax.plot([h["window"] for h in history], [float("nan") if y is None else y for y in ys], marker="o",
                    label=c)
        ax.axhline(cfg.drift, color="#b00", ls="--", lw=1)
        ax.axhline(cfg.possible, color="#c70", ls=":", lw=1)
        ax.set_ylabel("Hellinger")
        ax.set_xlabel("window start (unix s)")
        ax.legend(fontsize=7, ncol=3)
        parts.append(f"<h2>Drift score over time</h2><img src='{_png(fig)}'>")
    else:
        parts.append("<p>No serving-traffic windows yet.</p>")
    if latest is not None:
        parts.append("<h2>Reference (training) against the latest window</h2>")
        for c in columns:
            fig, ax = plt.subplots(figsize=(4, 2.4))
            for prof, label, color in ((reference, "reference", "#888"), (latest, "current", "#06c")):
                try:
                    h = profiler.histogram(prof, c)
                except Exception:  # a sketch over ±inf has no bins: that profile's chart is left out
                    continue
                if not isinstance(h, dict) and not all(map(math.isfinite, h[0])):
                    continue
                if isinstance(h, dict):
                    total = sum(h.values()) or 1
                    keys = sorted(h)
                    ax.bar([f"{k}\n" if label == "reference" else k for k in keys], [h[k] / total for k in keys],
                           alpha=0.5, label=label, color=color)
                else:
                    edges, probs = h
                    ax.stairs(probs, edges, label=label, color=color, fill=label == "reference", alpha=0.6)
            ax.set_title(c, fontsize=9)
            ax.legend(fontsize=7)
            parts.append(f"<img src='{_png(fig)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
