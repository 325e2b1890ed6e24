"""What changes between two Plans: `mlops plan maturity=3 --diff maturity=2`."""

from __future__ import annotations

from typing import Any

from mlops.plan._model import Plan

_KEYED = ("deployments", "automations", "gates", "infrastructure")


def diff_plans(old: Plan, new: Plan) -> dict[str, Any]:
    """Changes from `old` to `new`, by section; entries are matched by name. Empty sections are left out."""
    out: dict[str, Any] = {}
    old_steps = {s.name: s for s in old.steps}
    new_steps = {s.name: s for s in new.steps}
    steps: dict[str, list] = {
        "automated": sorted(n for n, s in new_steps.items() if s.automated and not (
            n in old_steps and old_steps[n].automated)),
        "manual": sorted(n for n, s in new_steps.items() if not s.automated and n in old_steps
                         and old_steps[n].automated),
        "added": [n for n in new_steps if n not in old_steps],
        "removed": [n for n in old_steps if n not in new_steps],
    }
    if any(steps.values()):
        out["steps"] = {k: v for k, v in steps.items() if v}
    for section in _KEYED:
        a = {e.name: e.model_dump(mode="json") for e in getattr(old, section)}
        b = {e.name: e.model_dump(mode="json") for e in getattr(new, section)}
        change = {
            "added": [b[n] for n in b if n not in a],
            "removed": [a[n] for n in a if n not in b],
            "changed": [{"name": n, **{k: {"from": a[n].get(k), "to": v} for k, v in b[n].items() if a[n].get(k) != v}}
                        for n in b if n in a and a[n] != b[n]],
        }
        if any(change.values()):
            out[section] = {k: v for k, v in change.items() if v}
    for section in ("services", "events"):
        added = [x for x in getattr(new, section) if x not in getattr(old, section)]
        removed = [x for x in getattr(old, section) if x not in getattr(new, section)]
        if added or removed:
            out[section] = {k: v for k, v in (("added", added), ("removed", removed)) if v}
    for key in ("recipe", "stack", "target", "maturity"):
        if getattr(old, key) != getattr(new, key):
            out[key] = {"from": getattr(old, key), "to": getattr(new, key)}
    return out


def render_diff(diff: dict[str, Any]) -> list[str]:
    """The diff as lines for a terminal: `+` added, `-` removed, `~` changed."""
    if not diff:
        return ["no changes"]
    lines = []
    for key in ("recipe", "stack", "target", "maturity"):
        if key in diff:
            lines.append(f"~ {key}: {diff[key]['from']} -> {diff[key]['to']}")
    steps = diff.get("steps", {})
    for label, mark in (("automated", "+ automated step"), ("manual", "- automated step (now manual)"),
                        ("added", "+ step"), ("removed", "- step")):
        lines += [f"{mark}: {n}" for n in steps.get(label, [])]
    for section in ("deployments", "automations", "gates", "infrastructure"):
        single = section.rstrip("s") if section != "infrastructure" else "component"
        for e in diff.get(section, {}).get("added", []):
            lines.append(f"+ {single}: {_describe(section, e)}")
        for e in diff.get(section, {}).get("removed", []):
            lines.append(f"- {single}: {_describe(section, e)}")
        for e in diff.get(section, {}).get("changed", []):
            fields = ", ".join(f"{k} {v['from']} -> {v['to']}" for k, v in e.items() if k != "name")
            lines.append(f"~ {single}: {e['name']}: {fields}")
    for section in ("services", "events"):
        lines += [f"+ {section[:-1]}: {x}" for x in diff.get(section, {}).get("added", [])]
        lines += [f"- {section[:-1]}: {x}" for x in diff.get(section, {}).get("removed", [])]
    return lines


def _describe(section: str, e: dict[str, Any]) -> str:
    if section == "deployments":
        when = f"every {e['interval_s']:g}s" if e["interval_s"] else "on trigger"
        return f"{e['name']} (flow {e['flow']}: {' -> '.join(e['steps'])}; {when})"
    if section == "automations":
        return f"{e['name']} (on {e['event']} of {e['resource']} run {e['deployment']})"
    if section == "gates":
        bounds = [f"{k} >= {v:g}" for k, v in e["floors"].items()] + [f"{k} <= {v:g}" for k, v in e["ceilings"].items()]
        return (f"{e['name']} after {e['after']}: {e['metric']} ({e['direction']}) beats the champion by >= "
                f"{e['min_improvement']:g}" + (f"; {', '.join(bounds)}" if bounds else ""))
    return f"{e['name']} ({e['flavor']})"
