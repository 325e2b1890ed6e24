"""The level-3 gate as a pure function: a candidate's test metrics against the champion's and the bounds."""

from __future__ import annotations

from typing import Any

from mlops.plan import Gate


def judge(gate: Gate, candidate: dict[str, float], champion: dict[str, float] | None) -> dict[str, Any]:
    """{"passed", "reasons", "metric", "candidate", "champion"}; every failed condition is a reason.

    With no champion yet only the absolute floors and ceilings apply.
    """
    reasons = []
    for name, floor in sorted(gate.floors.items()):
        if candidate[name] < floor:
            reasons.append(f"{name}={candidate[name]:.4f} is below the floor {floor:g} <maturity.gate.floors.{name}>")
    for name, ceiling in sorted(gate.ceilings.items()):
        if candidate[name] > ceiling:
            reasons.append(f"{name}={candidate[name]:.4f} is above the ceiling {ceiling:g} "
                           f"<maturity.gate.ceilings.{name}>")
    m = gate.metric
    best = champion.get(m) if champion else None
    if best is not None:
        gain = candidate[m] - best if gate.direction == "maximize" else best - candidate[m]
        if gain < gate.min_improvement:
            reasons.append(f"{m}={candidate[m]:.4f} does not beat the champion's {best:.4f} by at least "
                           f"{gate.min_improvement:g} ({gate.direction}) <maturity.gate.min_improvement>")
    return {"passed": not reasons, "reasons": reasons, "metric": m, "candidate": candidate[m], "champion": best}
