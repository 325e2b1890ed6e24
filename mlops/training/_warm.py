"""`model.init_from: champion`: a fit that starts from the champion's weights instead of a random init.

The warm-started module keeps what the champion fitted on its data (the scaling of numeric columns, the category
vocabularies, the classes: a family's ``fitted_hparams``), because its weights only mean something with that
preprocessing; the new settings that don't change the shapes (learning rate, dropout, weight decay) are the
recipe's. If the architecture differs (a family's ``architecture_hparams``: hidden sizes, feature columns, task,
target; or any weight's shape), or the new data has a class the champion never saw, the fit stops with a
ConfigError (exit 2) naming the difference, rather than silently training from scratch: the recipe says to
warm-start, and a run that quietly does something else would be judged as if it had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlops.errors import ConfigError, Problem
from mlops.training._family import load_checkpoint

HINT = ("train this change from scratch once with `model.init_from=none` (e.g. `mlops up model.init_from=none`); "
        "once that version is the champion, warm starts work again")


def warm_start(family: Any, module: Any, checkpoint: Path) -> Any:
    """`module` (built from the new training split) with the champion's weights from `checkpoint` loaded."""
    champion = load_checkpoint(family, checkpoint, map_location="cpu")
    new, old = dict(getattr(module, "hparams", {})), dict(getattr(champion, "hparams", {}))
    differs = [f"{k}: champion {old.get(k)!r}, recipe {new.get(k)!r}"
               for k in getattr(module, "architecture_hparams", ()) if old.get(k) != new.get(k)]
    fitted = getattr(module, "fitted_hparams", ())
    if "classes" in fitted and (unseen := sorted(set(map(str, new.get("classes", [])))
                                                - set(map(str, old.get("classes", []))))):
        differs.append(f"classes {unseen} are in the new data and not in the champion's")
    if not differs and fitted:
        module = type(module)(**{**new, **{k: old[k] for k in fitted}})
    if not differs:
        mine = module.state_dict()
        theirs = champion.state_dict()
        differs = [f"weights {k}: champion {tuple(theirs[k].shape) if k in theirs else 'none'}, recipe "
                   f"{tuple(mine[k].shape) if k in mine else 'none'}"
                   for k in sorted(set(mine) | set(theirs))
                   if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape]
    if differs:
        raise ConfigError([Problem("model.init_from", f"is `champion`, but the champion ({checkpoint}) does not "
                                   f"have this model's architecture: {'; '.join(differs[:6])}", "", HINT)])
    module.load_state_dict(champion.state_dict())
    return module
