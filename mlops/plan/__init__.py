"""The Plan: a validated Config compiled, level by level, into steps, deployments, automations, gates and
infrastructure; see README.md in this folder."""

from mlops.plan._diff import diff_plans, render_diff
from mlops.plan._levels import LEVELS, STEPS, compile_plan, gate_spec
from mlops.plan._model import Automation, Component, Deployment, Gate, Plan, Step
from mlops.plan._preview import PlanTarget, build_plan, current_training_key

__all__ = sorted([
    "LEVELS", "STEPS", "Automation", "Component", "Deployment", "Gate", "Plan", "PlanTarget", "Step",
    "build_plan", "compile_plan", "gate_spec", "current_training_key", "diff_plans", "render_diff",
])
