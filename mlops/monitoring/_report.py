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


def drift_history(profiler: Profiler, reference: Any, window_dir: Path, columns: list[str], cfg: DriftConfig,
                  outputs: list[str] | None = None) -> list[dict[str, Any]]:
    """One entry per stored window, oldest first: rows and each input column's score and category (`columns`,
    `drift`), and apart from them the served outputs' (`outputs`, `output_drift`)."""
    outputs = list(outputs or [])
    out = []
    for start, path in windows(window_dir):
        # One window that cannot be read or scored is reported and skipped; the others still score.
        try:
            current = profiler.read(path)
            rows = profiler.rows(current)
            scores = profiler.drift(reference, current, columns + outputs, cfg)
        except Exception as exc:  # a corrupt or unscorable window must not hide every other window
            out.append({"window": start, "rows": None, "skipped": f"{type(exc).__name__}: {exc}",
                        "columns": {c: {"score": None, "category": "NO_VERDICT"} for c in columns}, "drift": [],
                        "outputs": {c: {"score": None, "category": "NO_VERDICT"} for c in outputs},
                        "output_drift": []})
            continue

        def verdicts(names: list[str]) -> dict[str, Any]:
            return {c: {"score": scores[c].score, "category": scores[c].category,
                        **({"reason": scores[c].reason} if scores[c].reason else {})} for c in names}

        entry: dict[str, Any] = {
            "window": start,
            "rows": rows,
            "columns": verdicts(columns),
            "drift": sorted(c for c in columns if scores[c].category == "DRIFT"),
            "outputs": verdicts(outputs),
            "output_drift": sorted(c for c in outputs if scores[c].category == "DRIFT"),
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
                columns: list[str], cfg: DriftConfig, outputs: list[str] | None = None) -> str:
    """The page: the latest window's verdicts, input and output drift over time, and each column's distribution
    (reference against the latest window). `outputs` are the served outputs' columns (output.*), shown apart."""
    outputs = list(outputs or [])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;margin:2em} td,th{padding:4px 10px;text-align:left}"
             ".DRIFT{color:#b00;font-weight:bold}.POSSIBLE_DRIFT{color:#c70}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Hellinger distance per column, latest window against the reference profile (inputs: the training "
             f"data; outputs: the model's predictions on the validation data). "
             f"POSSIBLE_DRIFT from {cfg.possible}, DRIFT from {cfg.drift} (monitoring.drift.*); windows under "
             f"{cfg.min_window_rows} rows get no verdict.</p>"]
    if history:
        last = history[-1]
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last["window"]))
        parts.append(f"<h2>Latest window: {when}, {last['rows']} rows</h2>")
        for section, key, names in (("Inputs", "columns", columns), ("Outputs (predictions)", "outputs", outputs)):
            if names:
                parts.append(_table(section, last.get(key, {}), names))
        for section, key, names in (("Input drift over time", "columns", columns),
                                    ("Output drift over time", "outputs", outputs)):
            if names:
                parts.append(f"<h2>{section}</h2><img src='{_png(_over_time(plt, history, key, names, cfg))}'>")
    else:
        parts.append("<p>No serving-traffic windows yet.</p>")
    if latest is not None:
        parts.append("<h2>Reference against the latest window</h2>")
        for c in [*columns, *outputs]:
            parts.append(f"<img src='{_png(_distributions(plt, profiler, reference, latest, c))}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(section: str, verdicts: dict[str, Any], names: list[str]) -> str:
    rows = [f"<h3>{html.escape(section)}</h3><table><tr><th>column</th><th>score</th><th>verdict</th></tr>"]
    for c in names:
        d = verdicts.get(c, {"score": None, "category": "NO_VERDICT"})
        score = "–" if d["score"] is None else f"{d['score']:.3f}"
        rows.append(f"<tr><td>{html.escape(c)}</td><td>{score}</td><td class='{d['category']}'>{d['category']}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _over_time(plt: Any, history: list[dict[str, Any]], key: str, names: list[str], cfg: DriftConfig) -> Any:
    fig, ax = plt.subplots(figsize=(8, 3))
    for c in names:
        ys = [h.get(key, {}).get(c, {}).get("score") for h in history]
        ax.plot([h["window"] for h in history], [float("nan") if y is None else y for y in ys], marker="o", label=c)
    ax.axhline(cfg.drift, color="#b00", ls="--", lw=1)
    ax.axhline(cfg.possible, color="#c70", ls=":", lw=1)
    ax.set_ylabel("Hellinger")
    ax.set_xlabel("window start (unix s)")
    ax.legend(fontsize=7, ncol=3)
    return fig


def _distributions(plt: Any, profiler: Profiler, reference: Any, latest: Any, column: str) -> Any:
    fig, ax = plt.subplots(figsize=(4, 2.4))
    for prof, label, color in ((reference, "reference", "#888"), (latest, "current", "#06c")):
        try:
            h = profiler.histogram(prof, column)
        except Exception:  # a sketch over ±inf, or a column the profile lacks: that profile's chart is left out
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
    ax.set_title(column, fontsize=9)
    ax.legend(fontsize=7)
    return fig
