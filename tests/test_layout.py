"""mlops._layout: the one owner of the state directory's layout (STYLE 22)."""

from __future__ import annotations

import re
from pathlib import Path

from mlops._layout import Layout
from mlops.serving._server import TritonServer
from mlops.targets._prefect import prefect_service

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mlops"
# The owner itself, and the pipeline, which is being moved onto Layout separately (issue 11): drop it from here
# once it asks Layout for its paths.
EXEMPT = {PACKAGE / "_layout.py"}

# Every top-level name of the state directory (see the tree in mlops/_layout.py's docstring).
STATE_NAMES = ("registry", "datasets", "training", "exports", "work", "runs", "monitoring", "quarantine", "cache",
               "pids", "logs", "runner", "prefect", "triton", "pulumi", "neptune", "mlflow.db", "mlartifacts",
               "pulumi-stack.json")
# `<anything> / "registry"`, `.joinpath("pids", ...)`, `os.path.join(x, "logs")`, in either quote style.
JOIN = re.compile(r"""(?:/\s*|joinpath\(\s*|os\.path\.join\([^)]*,\s*)(["'])(%s)\1"""
                  % "|".join(re.escape(n) for n in STATE_NAMES))


def spelled_paths(text: str) -> list[str]:
    return [m.group(0) for m in JOIN.finditer(text)]


def test_the_detector_finds_the_spellings_it_forbids():
    assert spelled_paths('reg = Registry(state_dir / "registry")') == ['/ "registry"']
    assert spelled_paths("f\"sqlite:///{state_dir / 'mlflow.db'}\"") == ["/ 'mlflow.db'"]
    assert spelled_paths('Path(s).joinpath("pids", "x.pid")') == ['joinpath("pids"']
    assert spelled_paths('os.path.join(state, "logs")') == ['os.path.join(state, "logs"']
    # Other folders, and the names as plain words, are fine.
    assert spelled_paths('tmp / "bin" / "tritonserver"; runtime / "caches"; {"runs": 1}; "registry"') == []


def test_no_module_but_the_layout_joins_a_state_folder_onto_a_path():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in EXEMPT:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if spelled_paths(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "ask mlops._layout.Layout for these paths (add a method there if one is missing):\n" + \
        "\n".join(offenders)


def test_the_paths_stay_where_existing_state_directories_have_them(tmp_path):
    s = tmp_path / "state"
    layout = Layout(str(s))
    assert layout.registry == s / "registry"
    assert layout.snapshot("churn", "sha256:0123456789abcdef0123456789") == \
        s / "datasets" / "churn" / "0123456789abcdef0123.parquet"
    assert layout.export("churn", 3) == s / "exports" / "churn" / "3"
    assert layout.windows("churn", 3) == s / "monitoring" / "churn" / "3" / "windows"
    assert layout.model_monitoring("churn") == s / "monitoring" / "churn"
    assert layout.quarantine("churn") == s / "quarantine" / "churn"
    assert layout.runner_spec("churn") == s / "runner" / "churn.json"
    assert layout.triton_repository == s / "triton" / "models"
    assert layout.triton_info == s / "triton" / "server.json"
    assert layout.serving_state("churn") == s / "triton" / "serving" / "churn.json"
    assert layout.pulumi_stack == s / "pulumi-stack.json"
    assert (layout.mlflow_db, layout.mlartifacts) == (s / "mlflow.db", s / "mlartifacts")


def test_services_keep_their_pid_files_and_logs(tmp_path):
    triton = TritonServer(tmp_path)
    assert (triton.pid_path, triton.log_path) == (tmp_path / "pids" / "triton.pid", tmp_path / "logs" / "triton.log")
    assert triton.runtime_dir == tmp_path / "triton"
    prefect = prefect_service(tmp_path)
    assert (prefect.pid_file, prefect.log_file) == (tmp_path / "pids" / "prefect.pid",
                                                    tmp_path / "logs" / "prefect.log")
