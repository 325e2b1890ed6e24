"""target=aws: Pulumi's Automation API. Checked before any side effect; the programs come with infra/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from mlops.errors import TargetUnavailable
from mlops.recipe.schema import Config


def _aws_credentials() -> bool:
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return True
    home = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", Path.home() / ".aws" / "credentials"))
    return home.is_file()


class AwsTarget:
    def __init__(self, cfg: Config, project: Path):
        self.cfg = cfg
        self.project = project
        self.state_dir = (project / cfg.target.state_dir).resolve()

    def unavailable(self) -> TargetUnavailable:
        """Why this target cannot run here; raised before any side effect."""
        missing = []
        if shutil.which("pulumi") is None:
            missing.append("the `pulumi` CLI is not on PATH (install it: https://www.pulumi.com/docs/install/, "
                           "then check `pulumi version`)")
        if not _aws_credentials():
            missing.append("no AWS credentials (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                           "or run `aws configure`)")
        if self.cfg.stack.pulumi_project is None:
            missing.append(f"stack {self.cfg.stack.name!r} names no Pulumi project (stack.pulumi_project); "
                           "use stack=reasonable-scale")
        if missing:
            return TargetUnavailable(
                "target=aws cannot run from here, and nothing was changed: " + "; ".join(missing)
                + ". Use target=local (the default) to run the same recipe on this machine."
            )
        return TargetUnavailable(
            f"target=aws: the Pulumi program for stack {self.cfg.stack.name!r} is not part of this release yet "
            "(it comes with the Pulumi stacks work). Nothing was changed. Use target=local."
        )

    def planned_services(self) -> list[dict[str, Any]]:
        return [{"name": "pulumi", "url": f"stack {self.cfg.stack.name}", "action": "provision"},
                {"name": "triton", "url": "(from the stack outputs)", "action": "provision"}]

    def up(self, progress: bool = False, rerun: bool = False) -> dict[str, Any]:
        raise self.unavailable()

    def down(self) -> dict[str, bool]:
        raise self.unavailable()

    def status(self) -> dict[str, Any]:
        raise self.unavailable()
