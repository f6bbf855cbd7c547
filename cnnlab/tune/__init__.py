"""Hyperparameter search on Optuna (`cnnlab tune`): random by default, crash-safe, many workers.

    from cnnlab.tune import tune, summarize
    out = tune(build_config("digits", epochs=2), trials=20)        # DIR/trials/NNNN are normal run folders
    summarize(out, None, console)                                  # tune.json, best.yaml, table, plots

Modules: space (the YAML search space), study (storage, samplers, pruners, handing out trials), trial (one
trial through api.fit / api.resume), search (the study folder and the workers), results, confirm, compare.
Everything here imports optuna; the CLI imports this package inside its functions.
"""

from cnnlab.tune.results import summarize
from cnnlab.tune.search import tune

__all__ = ["summarize", "tune"]
