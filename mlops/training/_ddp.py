"""Data-parallel training: the framework starts one worker process per device, the way a cluster launcher does.

    compute: {strategy: ddp, devices: 2, accelerator: cpu}    # 2 processes on this machine, gloo, one model

`fit` calls :func:`launch` when the recipe asks for more than one process and nothing has started them yet. It
writes the recipe and the split to ``out_dir/.ddp/spec.pkl`` and runs ``python -m mlops.training._worker SPEC`` once
per local rank, with the rendezvous in the environment torchrun and AWS Batch multi-node / EKS jobs also give:
``MASTER_ADDR MASTER_PORT WORLD_SIZE RANK LOCAL_RANK NODE_RANK``. Lightning's ``LightningEnvironment`` sees
``LOCAL_RANK``, knows the processes were created outside it and launches nothing; each worker runs the ordinary
in-process `fit` (``_fit.py``), which is also what a node of a cloud multi-node job runs. Rank 0 alone writes the
checkpoint, ``history.json`` and ``compute.json`` (the ranks that trained, for the lineage); the caller then logs
the history into its tracker, so only one process ever talks to the tracker.

Why not Lightning's own launchers:

- ``ddp`` (its subprocess launcher) re-runs ``sys.argv`` once per extra rank. Under ``mlops up`` that is the whole
  ``mlops up ...`` command (a second pipeline); in a Prefect flow-run process it is Prefect's engine.
- ``ddp_spawn`` pickles the Trainer, module and loggers into ``torch.multiprocessing`` children that re-import the
  parent's ``__main__`` (the CLI, Prefect's engine); the trained weights come back through a file anyway.
  Lightning's docs recommend ``ddp`` over it, and the fit's callbacks (history, best checkpoint) would stay in the
  children: the recipe loader refuses it (schema.ComputeConfig).
- ``ddp_fork`` forks a process that already runs threads (Prefect's event loop, tracking clients) and cannot use
  CUDA once the parent has touched it.

Single node: the rendezvous binds to 127.0.0.1 (gloo over the loopback interface). A node of a multi-node job takes
``MASTER_ADDR`` (or AWS Batch's ``AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS``) and ``NODE_RANK`` (or
``AWS_BATCH_JOB_NODE_INDEX``) from its environment. A worker that dies stops the others (they would wait on it in a
collective for gloo's 30 minutes) and is one clear error; a worker's own MlopsError (non-finite loss, a metric the
module never logs) comes back as itself, with its exit code. Each worker keeps one intra-op thread (``fit``).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from mlops._atomic import write_atomic
from mlops._process import run_together
from mlops.errors import ConfigError, MlopsError, Problem
from mlops.recipe.schema import ComputeConfig, Config
from mlops.training._split import Split

COMPUTE = "compute.json"  # the strategy and the ranks that trained: the lineage's "compute"
_SPEC = "spec.pkl"
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def devices(compute: ComputeConfig) -> int:
    """Processes per node: ``compute.devices``, or for ``auto`` every visible GPU when the accelerator may be one
    (Lightning's own rule), else 1."""
    if compute.devices != "auto":
        return int(compute.devices)
    if compute.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def world_size(compute: ComputeConfig) -> int:
    return devices(compute) * compute.num_nodes


def trainer_strategy(compute: ComputeConfig) -> str:
    """The Trainer's strategy: ``ddp`` over one process would only leave a process group of one open in the
    caller (the CLI, a flow run), where a later fit or evaluation would find it."""
    return "auto" if compute.strategy == "ddp" and world_size(compute) == 1 else compute.strategy


def launches(compute: ComputeConfig, env: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether `fit` must start the worker processes itself: more than one rank, a strategy Lightning would
    otherwise launch by re-running ``sys.argv``, and no launcher (torchrun, these workers) has started us."""
    return world_size(compute) > 1 and "LOCAL_RANK" not in env


def check_machine(compute: ComputeConfig) -> None:
    """Raise ConfigError (exit 2) before training when this machine lacks the devices the recipe asks for;
    Lightning would say it later and in its own words."""
    if compute.accelerator in ("gpu", "cuda"):
        have = torch.cuda.device_count()
        want = devices(compute)
        if have < max(want, 1):
            raise ConfigError([Problem(
                "compute.accelerator", f"asks for {want} GPU(s) (compute.devices={compute.devices}) but this machine "
                f"has {have}", "", "train on the CPU here (compute=cpu, or compute.accelerator=cpu; "
                "compute.strategy=ddp compute.devices=2 runs 2 processes) or on a target with GPUs")])


def rendezvous(compute: ComputeConfig, env: dict[str, str] | os._Environ = os.environ) -> tuple[str, int, int]:
    """``(master address, master port, node rank)`` for this node's workers; a ConfigError if several nodes
    are asked for and the environment does not say where rank 0 is."""
    node_rank = int(env.get("NODE_RANK") or env.get("AWS_BATCH_JOB_NODE_INDEX") or 0)
    addr = env.get("MASTER_ADDR") or env.get("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS")
    if compute.num_nodes > 1 and not addr:
        raise ConfigError([Problem(
            "compute.num_nodes", f"is {compute.num_nodes}, but nothing here says where rank 0 listens (MASTER_ADDR, "
            "or AWS Batch's AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS), nor which node this is (NODE_RANK)", "",
            "run several nodes through a multi-node target (AWS Batch multi-node, EKS, torchrun); on one machine "
            "use compute.num_nodes=1 compute.devices=N")])
    if compute.num_nodes == 1:
        # One machine: nothing listens beyond the loopback interface, on a fresh port (MASTER_PORT in this
        # process's environment may be one Lightning wrote there for an earlier fit, whose store still listens).
        return "127.0.0.1", _free_port(), 0
    return str(addr), int(env.get("MASTER_PORT") or 29500), node_rank


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_env(compute: ComputeConfig, addr: str, port: int, node_rank: int, local_rank: int) -> dict[str, str]:
    per_node = devices(compute)
    env = {**os.environ, "MASTER_ADDR": addr, "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size(compute)),
           "NODE_RANK": str(node_rank), "LOCAL_RANK": str(local_rank), "RANK": str(node_rank * per_node + local_rank),
           "MLOPS_DDP_PARENT": str(os.getpid())}
    # The package this process runs, wherever it was imported from (a checkout, a test's sys.path).
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    # N processes on N cores: one OpenMP thread each (fit also keeps torch's intra-op pool at one thread).
    env.setdefault("OMP_NUM_THREADS", "1")
    if addr == "127.0.0.1" and any(name == "lo" for _, name in socket.if_nameindex()):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def workdir(out_dir: Path) -> Path:
    """The launcher's scratch folder in a training key's folder: the spec, each rank's log and error."""
    return out_dir / ".ddp"


def rank_log(out_dir: Path, rank: int) -> Path:
    return workdir(out_dir) / f"rank-{rank}.log"


def error_file(out_dir: Path, rank: int) -> Path:
    return workdir(out_dir) / f"rank-{rank}.error"


def launch(cfg: Config, split: Split, out_dir: Path, project: Path | None, last: Path,
           init_from: Path | None = None) -> None:
    """Train ``cfg`` on ``split`` in this node's worker processes; returns once every one has finished, having
    written ``out_dir`` as an in-process `fit` does. ``last`` is the fit's resume checkpoint (for the message);
    ``init_from`` the warm start's checkpoint, which every rank loads (DDP then broadcasts rank 0's weights)."""
    c = cfg.compute
    addr, port, node_rank = rendezvous(c)
    work = workdir(out_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = work / _SPEC
    # The config as data: its class is built at run time from the installed flavors (schema.config_class).
    write_atomic(spec, pickle.dumps({"cfg": cfg.model_dump(mode="json"), "split": split, "out_dir": out_dir,
                                     "project": project, "init_from": init_from}))
    argv = [sys.executable, "-m", "mlops.training._worker", str(spec)]
    n = devices(c)
    codes = run_together([(argv, _worker_env(c, addr, port, node_rank, i), rank_log(out_dir, i)) for i in range(n)])
    if any(code != 0 for code in codes):
        raise _failure(cfg, out_dir, node_rank * n, codes, last)
    shutil.rmtree(work, ignore_errors=True)  # the spec holds a copy of the data


def _failure(cfg: Config, out_dir: Path, first_rank: int, codes: list[int | None], last: Path) -> MlopsError:
    """The error to raise for the first worker that failed: its own MlopsError if it raised one, else which rank
    died how. A rank killed by a signal is the cause rather than its peers' broken collectives; among ranks that
    raised, the first to write its error is."""
    failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
    raised = {i: read_error(error_file(out_dir, i)) for i in failed if error_file(out_dir, i).is_file()}
    own = [i for i in failed if i in raised and isinstance(raised[i], MlopsError)]
    if own:
        return raised[own[0]]  # type: ignore[return-value]
    killed = [i for i in failed if (codes[i] or 0) < 0]
    by_time = sorted(raised, key=lambda i: error_file(out_dir, i).stat().st_mtime_ns)
    i = (killed or by_time or failed)[0]
    code = codes[i] or 0
    if i in raised:
        how = f"failed: {raised[i]}"
    elif code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code}"
    c = cfg.compute
    resume = ""
    if last.is_file():
        resume = f" Running it again resumes from {last} (left after the last finished epoch)."
    return MlopsError(
        f"training worker rank {first_rank + i} of {world_size(c)} (compute.strategy={c.strategy} "
        f"compute.devices={c.devices} compute.num_nodes={c.num_nodes}) {how}; the other workers were stopped and "
        f"no model is registered. Its log: {rank_log(out_dir, i)}.{resume} Hint: a worker killed by SIGKILL often "
        "ran out of memory; compute.devices=1 trains in one process.")


def write_error(path: Path, exc: BaseException) -> None:
    """An MlopsError as itself (class and attributes: a ConfigError keeps its problems), anything else as one
    line; the traceback is in the rank's log."""
    lines = str(exc).strip().splitlines()
    payload: tuple[Any, ...] = ("text", f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}")
    if isinstance(exc, MlopsError):
        try:
            payload = ("error", type(exc), dict(exc.__dict__), str(exc))
            pickle.dumps(payload)
        except Exception:  # noqa: BLE001 - an attribute that does not pickle: its text still tells the user
            payload = ("text", str(exc))
    write_atomic(path, pickle.dumps(payload))


def read_error(path: Path) -> MlopsError | str:
    payload = pickle.loads(path.read_bytes())
    if payload[0] == "error":
        _, kind, attrs, text = payload
        err = kind.__new__(kind)
        Exception.__init__(err, text)
        err.__dict__.update(attrs)
        return err
    return str(payload[1])


class RankRecord(pl.Callback):
    """Writes ``compute.json`` from rank 0 when the fit ends: the strategy and what every rank trained on in the
    last epoch (its pid, host and sample count), gathered over the process group. The lineage carries it, so a
    registered version says how many processes trained it."""

    def __init__(self, out_dir: Path, compute: ComputeConfig) -> None:
        self.path = Path(out_dir) / COMPUTE
        self.compute = compute
        self.samples = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.samples = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        first = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.samples += len(first) if hasattr(first, "__len__") else 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mine = {"rank": trainer.global_rank, "local_rank": trainer.local_rank, "node_rank": trainer.node_rank,
                "pid": os.getpid(), "host": socket.gethostname(), "train_samples_last_epoch": self.samples}
        ranks = [mine]
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            ranks = [{} for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(ranks, mine)
        if trainer.is_global_zero:
            record = {**self.compute.model_dump(mode="json", include={"accelerator", "strategy", "devices",
                                                                        "num_nodes", "precision"}),
                      "world_size": trainer.world_size, "ranks": ranks}
            write_atomic(self.path, json.dumps(record, indent=2))
