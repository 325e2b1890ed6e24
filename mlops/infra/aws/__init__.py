"""AWS ComponentResources of the stacks (imports Pulumi; never imported by `import mlops`)."""

from mlops.infra.aws._common import MANAGED_POLICIES, UNSCOPABLE_ACTIONS, Account
from mlops.infra.aws._compute import Orchestration, RuntimeImage, TrainingCompute
from mlops.infra.aws._events import DataSchedule, Monitoring
from mlops.infra.aws._network import Network
from mlops.infra.aws._serving import PUBLIC_PATHS, TritonServing
from mlops.infra.aws._store import ArtifactStore, Tracking

__all__ = sorted(["MANAGED_POLICIES", "PUBLIC_PATHS", "UNSCOPABLE_ACTIONS", "Account", "ArtifactStore", "DataSchedule",
                  "Monitoring", "Network", "Orchestration", "RuntimeImage", "TrainingCompute", "TritonServing", "Tracking"])
