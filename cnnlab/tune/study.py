"""The Optuna side of `cnnlab tune`: storage, sampler, pruner, and handing out trials to workers crash-safely.

- Storage: an Optuna journal file `DIR/study.journal` by default (append-only, crash-safe, no server;
  `optuna-dashboard DIR/study.journal` reads it), or any Optuna RDB URL (`postgresql://...`) that workers on many
  machines join.
- Samplers: random (the default, as the notes advise), grid and TPE, all seeded from train.seed. The random
  sampler draws each value from (seed, trial number, key), so the same command proposes the same trials whatever
  the number of workers and the order they finish in.
- Who owns a trial: every RUNNING trial carries its worker's host, pid and process start time (and a heartbeat,
  for workers on other machines). A trial whose worker is gone (kill -9, power loss, OOM killer) is resumed in
  place by the next worker that asks: same number, same run folder (continued from its last checkpoint), so no
  trial is lost or counted twice.
- Counting: a worker takes a new trial only while finished + running trials are under N, under a file lock in
  DIR (one machine). Workers on other machines can race past N; the extra trial is marked `surplus` and not run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from cnnlab.errors import CnnlabError
from cnnlab.tune.space import Param, grid_space

JOURNAL = "study.journal"
LOCK = ".tune.lock"
HEARTBEAT_S = 30.0
STALE_S = 180.0  # a trial of another machine without a heartbeat for this long is taken over


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns on re-reported steps of a resumed trial; tune prints its own."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*already reported.*")


def open_storage(url: str | None, out: Path) -> Any:
    """The journal file in DIR (default), a journal file path, or an Optuna RDB URL."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if url is None or "://" not in url:
        path = str(out / JOURNAL) if url is None else url
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    for attempt in range(4):
        try:
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as e:  # a bad URL, a missing driver, a server that does not answer
            import sqlalchemy.exc

            if isinstance(e, sqlalchemy.exc.IntegrityError) and attempt < 3:  # another process created the tables
                time.sleep(0.5 * (attempt + 1))
                continue
            raise CnnlabError(f"cannot open --storage {mask(url)}: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:200]}") from None
    raise AssertionError("unreachable")


def mask(url: str | None) -> str | None:
    """The URL without its password (for tune.yaml and messages)."""
    if url is None or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    auth, host = rest.rsplit("@", 1)
    return f"{scheme}://{auth.split(':')[0]}:***@{host}" if ":" in auth else url


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Random search whose draws depend on (seed, trial number, key) only: reproducible with any worker count."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        seed = zlib.crc32(f"{self.seed}:{trial.number}:{name}".encode())
        return optuna.samplers.RandomSampler(seed=seed).sample_independent(study, trial, name, distribution)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler for ask / tell: its after_trial stops `optimize` when the grid is done, which outside optimize
    is an error; here the workers ask `is_exhausted` before taking a trial instead."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def make_sampler(kind: str, params: list[Param], seed: int, worker: int) -> Any:
    if kind == "random":
        return TrialSeededSampler(seed)
    if kind == "grid":
        return AskTellGridSampler(grid_space(params), seed=seed)
    if kind == "tpe":  # workers draw their random start-up trials from different seeds
        return optuna.samplers.TPESampler(seed=seed + 7919 * worker, n_startup_trials=min(10, 4 + len(params)))
    raise CnnlabError(f"unknown --sampler '{kind}': choose from random, grid, tpe")


def make_pruner(kind: str, epochs: int | str, n_trials: int) -> Any:
    """median: a trial whose best so far is under the median of the complete trials at that epoch stops, once
    there are a reference set of complete trials (an eighth of the budget, 2 to Optuna's default 5) and after the
    first epoch (often warm-up). hyperband: ASHA-style successive halving over the epochs."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, n_trials // 8)), n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs if isinstance(epochs, int)
                                              else "auto", reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise CnnlabError(f"unknown --pruner '{kind}': choose from median, hyperband, none")


def open_study(storage: Any, name: str, direction: str, sampler: Any, pruner: Any) -> optuna.Study:
    """Create the study, or join it when it exists (another worker, or a rerun of the same command)."""
    for attempt in range(5):  # two workers creating it at once: the loser loads it
        try:
            return optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                       pruner=pruner, load_if_exists=True)
        except optuna.exceptions.DuplicatedStudyError:
            time.sleep(0.2 * (attempt + 1))
    return optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)


# -- owners ----------------------------------------------------------------------------------------------------
def process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot; guards against a reused pid), None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie is as dead as a reaped process


def owner_record() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start(os.getpid())}


def sign(trial: Trial) -> None:
    """Make this worker the trial's owner, with a fresh heartbeat: until `Heartbeat` beats, a worker on another
    machine would otherwise read a missing (or the dead owner's old) `beat` and take the trial over."""
    trial.set_user_attr("beat", time.time())  # first: never a new owner with an old beat
    trial.set_user_attr("owner", owner_record())


def alive(owner: dict[str, Any]) -> bool:
    """Whether the worker process of an owner record (on this host) still runs."""
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = process_start(pid)
    return now is not None and (owner.get("started") is None or now == owner.get("started"))


def is_stale(t: FrozenTrial, now: float) -> bool:
    """A RUNNING trial nobody works on any more."""
    owner = t.user_attrs.get("owner")
    if owner is None:  # its worker died between taking it and signing it
        started = t.datetime_start.timestamp() if t.datetime_start else 0.0
        return now - started > 60
    if owner.get("host") == socket.gethostname():
        return not alive(owner)
    return now - float(t.user_attrs.get("beat", 0.0)) > STALE_S


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """One worker at a time counts and takes trials (flock on DIR/.tune.lock)."""
    with open(out / LOCK, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Claim:
    trial: Trial
    resumed: bool


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if not t.user_attrs.get("surplus")]


def claim_trial(study: optuna.Study, out: Path, n_trials: int) -> Claim | None:
    """A trial to run: a stale one to resume, else a new one while fewer than N exist; None when all are taken."""
    with folder_lock(out):
        trials = counted(study.get_trials(deepcopy=False))
        now = time.time()
        stale = [t for t in trials if t.state == TrialState.RUNNING and is_stale(t, now)]
        if stale:
            t = stale[0]
            trial = Trial(study, t._trial_id)  # Optuna has no public handle on an existing trial by number
            sign(trial)
            trial.set_user_attr("resumed", int(t.user_attrs.get("resumed", 0)) + 1)
            return Claim(trial, True)
        sampler = study.sampler
        if len(trials) >= n_trials or (hasattr(sampler, "is_exhausted") and sampler.is_exhausted(study)):
            return None
        trial = study.ask()
        sign(trial)
    if sum(1 for t in counted(study.get_trials(deepcopy=False)) if t.number < trial.number) >= n_trials:
        trial.set_user_attr("surplus", True)  # another machine took the last one at the same time
        study.tell(trial, state=TrialState.FAIL)
        return None
    return Claim(trial, False)


class Heartbeat:
    """Refreshes a trial's `beat` user attribute while it runs (for workers on other machines to see it alive)."""

    def __init__(self, trial: Trial, every: float = HEARTBEAT_S) -> None:
        self.trial, self.every = trial, every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a storage hiccup must not stop the trial
                self.trial.set_user_attr("beat", time.time())
            if self.done.wait(self.every):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.thread.join(timeout=5)
