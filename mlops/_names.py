"""The vocabulary every layer shares: step, flow, deployment, event and resource names.

One owner, at the bottom of the package, so that the Plan (which says what runs), the flows (which run
and emit it), the CLI (which runs a step by hand) and the Pulumi programs (which schedule deployments
and route events in the cloud) cannot drift apart: a Kubernetes CronJob that runs `prefect deployment
run <flow>/<deployment>` must name a deployment the Plan serves, and an EventBridge rule must match an
event a deployment emits. Plain strings and functions of the recipe's name; nothing imported.
"""

from __future__ import annotations

# ---------------------------------------------------------------- steps, in pipeline order
STEPS = ("ingest", "validate", "train", "evaluate", "register", "gate", "export", "deploy")
# Level 4's step; it judges served traffic, outside the pipeline above.
MONITOR_STEP = "monitor"
# What `mlops run <step>` runs by hand (level 0); export and deploy are `mlops deploy`, the gate is level 3's.
MANUAL_STEPS = ("ingest", "validate", "train", "evaluate", "register")
# What `mlops up` runs once when nothing is served: every step but the gate (a first model has no champion).
UP_STEPS = tuple(s for s in STEPS if s != "gate")

# ---------------------------------------------------------------- Prefect flows (`@flow(name=...)`)
DATA_FLOW = "mlops-data"
TRAIN_FLOW = "mlops-train"
MONITOR_FLOW = "mlops-monitor"
UP_FLOW = "mlops-up"
STEP_FLOW = "mlops-step"

# ---------------------------------------------------------------- events the deployments emit
DATASET_VALIDATED = "mlops.dataset.validated"
DATASET_QUARANTINED = "mlops.dataset.quarantined"
MODEL_REGISTERED = "mlops.model.registered"
GATE_PASSED = "mlops.gate.passed"
GATE_REJECTED = "mlops.gate.rejected"
MODEL_DEPLOYED = "mlops.model.deployed"
DRIFT_DETECTED = "mlops.drift.detected"
TRAFFIC_QUARANTINED = "mlops.traffic.quarantined"
# Level 3+: the runner's watchdog restarted the dead model server with the champion, or gave up (a crash loop).
SERVER_RESTARTED = "mlops.server.restarted"
SERVER_GAVE_UP = "mlops.server.gave-up"
# A cloud schedule asks for a run of one deployment (EventBridge Scheduler; the detail names it).
RUN_REQUESTED = "mlops.run.requested"
# The `source` of every mlops event on an EventBridge bus.
EVENT_SOURCE = "mlops"


# ---------------------------------------------------------------- per recipe
def data_deployment(recipe: str) -> str:
    return f"{recipe}-data"


def train_deployment(recipe: str) -> str:
    return f"{recipe}-train"


def monitor_deployment(recipe: str) -> str:
    return f"{recipe}-monitor"


def deployment_ref(flow: str, deployment: str) -> str:
    """How `prefect deployment run` names a deployment: `<flow name>/<deployment name>`."""
    return f"{flow}/{deployment}"


def dataset_resource(recipe: str) -> str:
    """The `prefect.resource.id` of the recipe's dataset events."""
    return f"mlops.dataset.{recipe}"


def model_resource(recipe: str) -> str:
    """The `prefect.resource.id` of the recipe's model, gate, drift and traffic events."""
    return f"mlops.model.{recipe}"
