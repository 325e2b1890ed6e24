"""One DDP worker: ``python -m mlops.training._worker SPEC``, started by :func:`mlops.training._ddp.launch` (or by
anything that sets the rendezvous variables: torchrun, a multi-node job) once per local rank; it runs the ordinary
in-process `fit` on the spec's recipe and split. A separate module from ``_ddp``, which `fit` imports: running that
one with ``-m`` would load it twice."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from pathlib import Path

from mlops.recipe.schema import Config
from mlops.training._ddp import RENDEZVOUS, error_file, write_error
from mlops.training._fit import fit


def _die_with_parent() -> None:
    """A worker whose launcher is killed (SIGKILL of the flow-run process) must not train on: on Linux the kernel
    sends it SIGKILL when its parent exits."""
    parent = int(os.environ.get("MLOPS_DDP_PARENT", "0"))
    try:
        import ctypes  # only here, and only on Linux

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """One worker: ``python -m mlops.training._worker SPEC`` with the rendezvous variables set (see the module)."""
    args = sys.argv[1:] if argv is None else argv
    missing = [k for k in RENDEZVOUS if k not in os.environ]
    if len(args) != 1 or missing:
        print("usage: python -m mlops.training._worker SPEC, with " + " ".join(RENDEZVOUS) + " set; it is started by "
              f"mlops' training (missing: {' '.join(missing) or 'SPEC'})", file=sys.stderr)
        return 2
    _die_with_parent()
    spec_path = Path(args[0])
    out_dir = spec_path.parent.parent
    try:
        spec = pickle.loads(spec_path.read_bytes())
        out_dir = Path(spec["out_dir"])
        fit(Config.model_validate(spec["cfg"]), spec["split"], out_dir, project=spec["project"],
            init_from=spec["init_from"])
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the launcher, the traceback to the log
        traceback.print_exc()
        write_error(error_file(out_dir, int(os.environ["LOCAL_RANK"])), exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
