"""`model=churn_net`: ChurnNet as a named mlops model flavor.

Its config is the `lightning` flavor's with `module` fixed, so a recipe names the flavor, not an import path;
the framework's `lightning` implementation imports, checks, trains, exports and serves it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlops.flavors import Flavor
from mlops.recipe.schema import LightningModelConfig


class ChurnNetConfig(LightningModelConfig):
    flavor: Literal["churn_net"] = "churn_net"
    module: Literal["churn_example.model:ChurnNet"] = Field(
        "churn_example.model:ChurnNet", description="Fixed: the flavor is this module.")


FLAVOR = Flavor("model", "churn_net", ChurnNetConfig, "mlops.training._lightning:LightningFamily",
                conf="churn_example:conf/model/churn_net.yaml",
                description="ChurnNet, a team's LightningModule for churn, published as a flavor.")
