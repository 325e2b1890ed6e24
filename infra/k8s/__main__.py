"""Standalone entry point: `pulumi up` in this folder runs the same program `mlops up target=aws` runs.

The program and its components live in the mlops package (mlops/infra/); this folder only carries
the Pulumi project. Its input is the `mlops:spec` object in Pulumi.<stack>.yaml.
"""

from mlops.infra.programs import run_from_pulumi_config

run_from_pulumi_config()
