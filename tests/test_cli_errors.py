"""The CLI's one error path: usage mistakes and commands a stack or target cannot serve end in one paragraph
and a documented exit code, never a traceback. Each case here printed a traceback before."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize(("args", "message"), [
    (("run",), "Error: Missing argument 'step'."),
    (("deploy",), "Error: Missing argument 'ref'."),
    (("stack", "show"), "Error: Missing argument 'name'."),
    (("stack", "nosuch"), "Error: No such command 'nosuch'."),
    (("--nosuch",), "Error: No such option: --nosuch"),
])
def test_usage_errors_exit_2_with_clicks_message(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_run_a_step_on_target_aws_says_what_the_target_does(tmp_path):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    proc = _cli("run", "ingest", "target=aws", "recipe=breast_cancer", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[:2] == ["mlops: invalid configuration", "1 problem in the configuration:"]
    assert ("  - override 'target=aws': `target` is aws, and `mlops run ingest` runs a step on this machine only: "
            "target=aws provisions the stack's infrastructure with Pulumi (`mlops up target=aws`, offline with "
            "`mlops plan target=aws`) and runs no pipeline step. Hint: run the step here: "
            "`mlops run ingest recipe=breast_cancer target=local`") in proc.stderr
    assert not (tmp_path / ".mlops").exists()  # refused before any side effect: no Prefect server, no state


@pytest.mark.parametrize("args", [("local",), ("reasonable-scale", "stack.pulumi_project=null")])
def test_pulumi_config_of_a_stack_without_a_pulumi_project(args):
    proc = _cli("stack", "show", *args, "--pulumi-config")
    assert proc.returncode == 2
    name = args[0]
    assert (f"  - stack={name}: `stack.pulumi_project` is null in stack '{name}': it provisions nothing, so there "
            "is no Pulumi program, spec or `mlops:spec` config for it. Hint: `mlops stack list` shows the stacks "
            "with a Pulumi project, e.g. stack=reasonable-scale") in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("flag", [(), ("--pulumi-config",)])
def test_stack_naming_an_unknown_pulumi_program(flag):
    proc = _cli("stack", "show", "reasonable-scale", "stack.pulumi_project=nosuch", *flag)
    assert proc.returncode == 2
    assert ("  - `stack.pulumi_project` names no registered Pulumi program; got 'nosuch', registered: k8s, "
            "reasonable_scale. Hint: register one under the `mlops.pulumi_programs` entry point, or pick a "
            "listed one") in proc.stderr


@pytest.mark.parametrize("stack", ["k8s", "reasonable-scale"])
def test_pulumi_config_of_a_stack_with_a_program(stack):
    import yaml

    proc = _cli("stack", "show", stack, "--pulumi-config")
    assert proc.returncode == 0, proc.stderr
    spec = yaml.safe_load(proc.stdout)["config"]["mlops:spec"]
    assert (spec["stack"], spec["program"]) == (stack, stack.replace("-", "_"))
