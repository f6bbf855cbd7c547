"""`cnnlab tune`: the study folder, its settings, and the workers that pull trials until N are done.

    DIR/tune.yaml        the search: base config, space, sampler, pruner, seed, study, storage (password masked)
    DIR/study.journal    the Optuna journal (default storage)
    DIR/trials/NNNN/     one normal run folder per trial (evaluate, predict, report, compare work on it)
    DIR/tune.json, DIR/best.yaml, DIR/history.png, DIR/parallel.png   the results (cnnlab.tune.results)

Rerunning the same command continues the study; a different base config, space, sampler, pruner or storage in the
same DIR is refused (a new --out or --study starts another search). `--workers K` starts K worker processes on this
machine (`cnnlab tune --worker DIR`), each with cores / K threads, all pulling trials from the same storage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import Config, build_config
from cnnlab.errors import CnnlabError
from cnnlab.train.callbacks import resolve_mode
from cnnlab.tune.space import grid_space, load_space, parse_space

SETTINGS = "tune.yaml"
STORAGE_ENV = "CNNLAB_TUNE_STORAGE"  # the real storage URL for the workers (tune.yaml holds it masked)
THREADS_ENV = "CNNLAB_TUNE_THREADS"
SEARCH_KEYS = ("study", "storage", "sampler", "pruner", "seed", "space", "base")  # what must match to continue a study


def study_folder(cfg: Config, study: str) -> Path:
    return Path(cfg.out) if cfg.out else Path("runs") / f"tune-{study}"


def direction(cfg: Config) -> str:
    monitor = cfg.callbacks.monitor if cfg.callbacks.monitor != "auto" else "val_accuracy"
    return "minimize" if resolve_mode(monitor, "auto") == "min" else "maximize"


def base_record(cfg: Config) -> dict[str, Any]:
    data = cfg.to_dict()
    data.pop("out", None)
    data.pop("verbose", None)
    return data


def prepare(cfg: Config, space: str | None, sampler: str, pruner: str, study: str, storage: str | None) -> Path:
    """Create DIR and its tune.yaml, or check that it holds this same search (then the study continues)."""
    from cnnlab.tune.study import mask

    raw, params = load_space(space, cfg)  # a bad space is refused before anything is written
    if sampler == "grid":
        grid_space(params)
    out = study_folder(cfg, study)
    settings = {"study": study, "storage": mask(storage) or "study.journal", "sampler": sampler, "pruner": pruner,
                "seed": cfg.train.seed, "direction": direction(cfg), "space": raw, "base": base_record(cfg)}
    path = out / SETTINGS
    if path.is_file():
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        changed = [k for k in SEARCH_KEYS if old.get(k) != settings[k]]
        if changed:
            detail = differing_keys(old.get("base") or {}, settings["base"]) if changed == ["base"] else changed
            raise CnnlabError(f"{out} holds another search (different {', '.join(detail[:6])}); rerun its own "
                              "command to continue it, or pass another --out / --study")
        return out
    if out.exists() and any(p.name != ".tune.lock" for p in out.iterdir()):
        raise CnnlabError(f"{out} is not empty and holds no search; choose another --out so nothing is overwritten")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return out


def differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict) and prefix.count(".") < 1:
            keys += differing_keys(x, y, f"{prefix}{k}.")
        elif x != y:
            keys.append(f"{prefix}{k}")
    return keys


def read_settings(out: Path) -> dict[str, Any]:
    path = out / SETTINGS
    if not path.is_file():
        raise CnnlabError(f"{out} holds no search ({SETTINGS} missing)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def work(out: Path, n_trials: int, storage: str | None, worker: int = 0, deadline: float | None = None,
         log: Any = print) -> int:
    """Pull trials from the study and run them until N exist (or the deadline); returns how many ran here."""
    from cnnlab.tune.study import claim_trial, make_pruner, make_sampler, open_storage, open_study, quiet_optuna
    from cnnlab.tune.trial import run_trial

    quiet_optuna()
    s = read_settings(out)
    base = build_config(config=s["base"], caller="cnnlab tune")
    params = parse_space(s["space"], base, SETTINGS)
    sampler = make_sampler(s["sampler"], params, int(s["seed"]), worker)
    study = open_study(open_storage(storage, out), s["study"], s["direction"], sampler,
                       make_pruner(s["pruner"], base.train.epochs, n_trials))
    ran = 0
    while deadline is None or ran == 0 or time.time() < deadline:  # as Optuna's timeout: the first trial runs
        claim = claim_trial(study, out, n_trials)
        if claim is None:
            break
        o = run_trial(study, claim.trial, claim.resumed, base, params, out)
        ran += 1
        values = "  ".join(f"{k}={format_value(v)}" for k, v in o.params.items())
        result = f"{o.value:.4f}" if o.value is not None else "-"
        tail = f"  ({o.reason})" if o.reason else ""
        again = " (resumed)" if claim.resumed else ""
        log(f"trial {o.number:4d} {o.state:8s} {result:>7s}  {o.epochs:3d} ep {o.seconds:6.1f}s{again}  {values}{tail}")
    return ran


def format_value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def run_workers(out: Path, n_trials: int, workers: int, storage: str | None, deadline: float | None) -> None:
    """K worker processes on this machine, each with its share of the CPU threads; waits for all of them."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           THREADS_ENV: str(threads)}
    if storage is not None:
        env[STORAGE_ENV] = storage
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "cnnlab", "tune", "--worker", str(out), "--worker-index", str(i),
               "--trials", str(n_trials), *(["--deadline", str(deadline)] if deadline else [])]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    if bad:
        raise CnnlabError("worker " + ", ".join(f"{i} exited with code {c}" for i, c in bad) +
                          f"; rerun the same command to continue the study in {out}")


def create_study(out: Path, storage: str | None) -> None:
    import optuna

    from cnnlab.tune.study import open_storage, open_study, quiet_optuna

    quiet_optuna()
    s = read_settings(out)
    open_study(open_storage(storage, out), s["study"], s["direction"], optuna.samplers.RandomSampler(),
               optuna.pruners.NopPruner())


def worker_main(out: str, index: int, n_trials: int, deadline: float | None) -> int:
    """The body of `cnnlab tune --worker DIR` (started by run_workers)."""
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    work(Path(out), n_trials, os.environ.get(STORAGE_ENV), index, deadline, log=lambda m: print(m, flush=True))
    return 0


def tune(cfg: Config, *, trials: int, space: str | None = None, sampler: str = "random", pruner: str = "median",
         workers: int = 1, storage: str | None = None, study: str = "tune", timeout: float | None = None,
         log: Any = print) -> Path:
    """Run (or continue) the search `cfg` is the base of; returns DIR. Results: cnnlab.tune.results.summarize."""
    if trials < 1 or workers < 1:
        raise CnnlabError("--trials and --workers must be at least 1")
    if sampler not in ("random", "grid", "tpe") or pruner not in ("median", "hyperband", "none"):
        raise CnnlabError("--sampler is random, grid or tpe; --pruner is median, hyperband or none")
    if cfg.distributed.nproc > 1:
        raise CnnlabError("cnnlab tune runs each trial in one process: use --workers K instead of --nproc")
    out = prepare(cfg, space, sampler, pruner, study, storage)
    deadline = time.time() + timeout if timeout else None
    log(f"tune: study '{study}' in {out} ({sampler} sampler, {pruner} pruner, {trials} trial{'s' * (trials != 1)}, "
        f"{workers} worker{'s' * (workers > 1)})")
    if workers == 1:
        work(out, trials, storage, 0, deadline, log)
    else:
        create_study(out, storage)  # the storage's tables and the study exist before the workers join
        run_workers(out, trials, workers, storage, deadline)
    return out
