"""cnnlab tune (issue 14): the search space, trials as run folders, failures, best.yaml, a kill -9 in the middle of
a trial, two workers on one journal file and on a real PostgreSQL server, and cnnlab compare.

Every search runs on the embedded digits data with 1-3 epoch trials of a small model, one thread per process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cnnlab.config import build_config
from cnnlab.errors import CnnlabError
from tests.conftest import REPO, run_cli

BASE = ["--model", "seed_cnn", "--epochs", "2", "--no-tensorboard", "--precision", "fp32", "--batch-size", "64"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tune_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab", "tune", *args], capture_output=True, text=True,
                          env=env(), timeout=timeout)


def write_space(path: Path, space: dict) -> str:
    path.write_text(yaml.safe_dump(space), encoding="utf-8")
    return str(path)


def study_trials(out: Path, storage: str | None = None) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if storage is None:
        path = str(out / "study.journal")
        storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    return optuna.load_study(study_name="tune", storage=storage).get_trials(deepcopy=False)


# -- the space ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry,message", [
    ({"train.lrr": {"uniform": [0.1, 0.2]}}, "unknown config key 'train.lrr' (did you mean train.lr?)"),
    ({"train.lr": {"uniform": [0.1, 0.1]}}, "empty range [0.1, 0.1]"),
    ({"train.lr": {"loguniform": [0.0, 0.1]}}, "loguniform needs positive bounds"),
    ({"train.lr": {"uniform": [-1.0, 0.1]}}, "--lr must be positive"),
    ({"train.optimizer": {"choice": ["adam", "adamm"]}}, "unknown --optimizer 'adamm'"),
    ({"train.lr": {"between": [1, 2]}}, "needs one of loguniform, uniform, int, choice, grid"),
    ({"train.batch_size": {"int": [8, 64.5]}}, "int needs whole-number bounds"),
    ({"model.name": {"choice": []}}, "needs a non-empty list"),
])
def test_a_bad_space_is_one_clear_error(tmp_path, entry, message):
    from cnnlab.tune.space import load_space

    with pytest.raises(CnnlabError) as e:
        load_space(write_space(tmp_path / "s.yaml", entry), build_config("digits"))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_space_file_in_the_issues_notation_is_read(tmp_path):
    """PyYAML reads 1e-4 (no dot) as text; the space takes it as the number it is."""
    from cnnlab.tune.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text("train.lr: {loguniform: [1e-4, 1e-1]}\nmodel.kwargs.dropout: {uniform: [0.0, 0.5]}\n"
                    "train.batch_size: {choice: [32, 64, 128]}\nmodel.name: {choice: [seed_cnn, resnet20]}\n")
    _, params = load_space(str(path), build_config("digits"))
    assert [(p.key, p.kind, p.low, p.high, p.values) for p in params] == [
        ("train.lr", "loguniform", 1e-4, 1e-1, ()), ("model.kwargs.dropout", "uniform", 0.0, 0.5, ()),
        ("train.batch_size", "choice", None, None, (32, 64, 128)),
        ("model.name", "choice", None, None, ("seed_cnn", "resnet20"))]


def test_the_default_space_differs_for_scratch_and_transfer():
    from cnnlab.tune.space import default_space

    scratch = default_space(build_config("digits", model="seed_cnn"))
    head = default_space(build_config("digits", model="seed_cnn", weights="w.pt", strategy="feature-extract"))
    assert {"train.lr", "train.weight_decay", "train.optimizer", "model.kwargs.dropout"} <= set(scratch)
    assert {"train.lr", "transfer.head", "transfer.head_dropout"} <= set(head) and "train.optimizer" not in head


def test_random_proposals_depend_only_on_seed_and_trial_number():
    """The same command proposes the same trials, whichever worker asks for which trial first."""
    import optuna

    from cnnlab.tune.space import parse_space
    from cnnlab.tune.study import TrialSeededSampler, quiet_optuna
    from cnnlab.tune.trial import suggest

    quiet_optuna()
    params = parse_space({"train.lr": {"loguniform": [1e-4, 1e-1]}, "train.batch_size": {"choice": [32, 64]},
                          "model.kwargs.width": {"int": [8, 32], "step": 8}}, build_config("digits"), "test")

    def proposals(seed: int) -> list[dict]:
        study = optuna.create_study(sampler=TrialSeededSampler(seed))
        return [suggest(study.ask(), params) for _ in range(5)]

    first, again, other = proposals(3), proposals(3), proposals(4)
    assert first == again and first != other
    assert all(1e-4 <= p["train.lr"] <= 1e-1 and p["model.kwargs.width"] in (8, 16, 24, 32) for p in first)


def test_help_imports_neither_torch_nor_optuna():
    code = ("import sys, contextlib, io\nfrom cnnlab.cli import main\n"
            "for argv in (['--help'], ['tune', '--help'], ['compare', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "print('torch' in sys.modules, 'optuna' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_a_bad_space_on_the_command_line_exits_2_with_one_line(tmp_path):
    r = tune_cli("digits", "--space", write_space(tmp_path / "s.yaml", {"train.lr": {"loguniform": [-1, 1]}}),
                 "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "loguniform needs positive bounds" in r.stderr
    assert not (tmp_path / "t").exists()


# -- a search ----------------------------------------------------------------------------------------------------
def test_grid_search_runs_folders_records_a_failed_trial_and_writes_a_trainable_best_yaml(tmp_path):
    """seed_cnn takes no `depth` (mlp does): those trials fail with their reason, and the study goes on."""
    space = write_space(tmp_path / "s.yaml", {"model.name": {"grid": ["seed_cnn", "mlp"]},
                                              "model.kwargs.depth": {"grid": [2]},
                                              "train.lr": {"grid": [1e-3, 3e-3]}})
    out = tmp_path / "search"
    r = tune_cli("digits", *BASE, "--epochs", "1", "--trials", "4", "--sampler", "grid", "--space", space,
                 "--out", str(out))
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "tune.json").read_text())
    states = {t["number"]: t["state"] for t in record["trials"]}
    assert sorted(states) == [0, 1, 2, 3] and record["counts"]["COMPLETE"] == 2 and record["counts"]["FAIL"] == 2
    combos = sorted((t["params"]["model.name"], t["params"]["train.lr"]) for t in record["trials"])
    assert combos == [("mlp", 1e-3), ("mlp", 3e-3), ("seed_cnn", 1e-3), ("seed_cnn", 3e-3)]  # the whole grid
    for t in record["trials"]:
        run = out / "trials" / f"{t['number']:04d}"
        if t["state"] == "FAIL":
            assert t["params"]["model.name"] == "seed_cnn" and "depth" in t["reason"] and "\n" not in t["reason"]
            continue
        else:
            metrics = json.loads((run / "metrics.json").read_text())
            assert t["value"] == metrics["best"]["val_accuracy"] and t["epochs"] == 1
    assert "top 2 of 4 trials" not in r.stdout and "val_accuracy" in r.stdout and "2 complete, 2 fail" in r.stdout
    assert (out / "history.png").stat().st_size > 5000 and (out / "parallel.png").stat().st_size > 5000
    best = yaml.safe_load((out / "best.yaml").read_text())
    trial_cfg = yaml.safe_load((out / record["best"]["run"] / "config.yaml").read_text())
    assert trial_cfg["train"]["checks"] is False and best["train"]["checks"] is True  # per-trial checks skipped
    assert best["model"]["name"] == "mlp" and best["train"]["lr"] == record["best"]["params"]["train.lr"]
    again = run_cli("train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "again"), "--quiet")
    assert again.returncode == 0, again.stderr
    retrained = json.loads((tmp_path / "again" / "metrics.json").read_text())["best"]["val_accuracy"]
    assert retrained == pytest.approx(record["best"]["value"], abs=1e-6)  # the same run, reproduced
    r = run_cli("evaluate", str(out / record["best"]["run"]))  # a trial is a normal run folder
    assert r.returncode == 0 and "accuracy" in r.stdout, r.stderr
    assert all((out / t["run"]).is_dir() for t in record["trials"] if t["run"])
    dashboard = pytest.importorskip("optuna_dashboard._storage_url")  # what `optuna-dashboard DIR/study.journal` opens
    storage = dashboard.get_storage(str(out / "study.journal"))
    assert [s.study_name for s in storage.get_all_studies()] == ["tune"]


def test_best_yaml_trains_with_the_base_configs_checks_and_nan_policy(tmp_path):
    """A trial runs with train.checks off and nan_policy stop (tune's choices); best.yaml gets the base's back."""
    from types import SimpleNamespace

    from cnnlab.tune.results import write_best
    from cnnlab.tune.search import prepare

    base = build_config("digits", model="seed_cnn", out=str(tmp_path / "search"))
    out = prepare(base, None, "random", "median", "tune", None)
    trial = yaml.safe_load((out / "tune.yaml").read_text())["base"]
    assert trial["train"]["nan_policy"] == "rollback"
    trial["train"].update(nan_policy="stop", checks=False)
    (out / "trials" / "0000").mkdir(parents=True)
    (out / "trials" / "0000" / "config.yaml").write_text(yaml.safe_dump(trial, sort_keys=False))
    best = yaml.safe_load(write_best(out, SimpleNamespace(number=0, value=0.5,
                                                          user_attrs={"run": "trials/0000"})).read_text())
    assert best["train"]["nan_policy"] == "rollback" and best["train"]["checks"] is True
    assert list(best["train"]) == list(trial["train"])  # the keys where they were


def test_a_diverging_trial_fails_with_its_reason(tmp_path):
    space = write_space(tmp_path / "s.yaml", {"train.lr": {"choice": [1e6]}, "train.optimizer": {"choice": ["sgd"]}})
    r = tune_cli("digits", *BASE, "--epochs", "1", "--trials", "1", "--space", space, "--out", str(tmp_path / "t"))
    assert r.returncode == 0, r.stderr
    (trial,) = json.loads((tmp_path / "t" / "tune.json").read_text())["trials"]
    assert trial["state"] == "FAIL" and "became" in trial["reason"] and "lower --lr" in trial["reason"]
    assert "no complete trial" in r.stdout and not (tmp_path / "t" / "best.yaml").exists()


def test_tpe_with_hyperband_pruning(tmp_path):
    out = tmp_path / "search"
    r = tune_cli("digits", *BASE, "--epochs", "3", "--trials", "3", "--sampler", "tpe", "--pruner", "hyperband",
                 "--out", str(out))
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "tune.json").read_text())
    assert len(record["trials"]) == 3 and record["counts"]["FAIL"] == 0 and record["counts"]["RUNNING"] == 0


def test_a_timeout_starts_no_trial_after_it_has_passed(tmp_path, one_thread):
    """--timeout is checked between trials (the first always runs): a timeout shorter than any trial runs one
    trial of the 50 asked for, on every machine."""
    from cnnlab.tune.search import tune

    cfg = build_config("digits", model="seed_cnn", epochs=1, precision="fp32", batch_size=64, tensorboard=False,
                       out=str(tmp_path / "search"))
    out = tune(cfg, trials=50, timeout=0.01, log=lambda m: None)
    assert [t.state.name for t in study_trials(out)] == ["COMPLETE"]


def test_rerunning_with_other_settings_in_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "search"
    assert tune_cli("digits", *BASE, "--epochs", "1", "--trials", "1", "--out", str(out)).returncode == 0
    r = tune_cli("digits", *BASE, "--epochs", "1", "--trials", "2", "--lr", "0.01", "--out", str(out))
    assert r.returncode == 2 and "holds another search (different train.lr)" in r.stderr


def test_rerunning_with_another_storage_in_the_same_folder_is_refused(tmp_path):
    """The trials' run folders belong to the first storage's study: another (or no) --storage is another search.
    tune.yaml holds the URL without its password, and that is what is compared."""
    from cnnlab.tune.search import prepare

    cfg = build_config("digits", model="seed_cnn", out=str(tmp_path / "search"))
    prepare(cfg, None, "random", "median", "tune", None)
    for storage in (str(tmp_path / "other.journal"), "postgresql://me:secret@db.example/optuna"):
        with pytest.raises(CnnlabError, match=r"holds another search \(different storage\)") as e:
            prepare(cfg, None, "random", "median", "tune", storage)
        assert "\n" not in str(e.value) and "secret" not in str(e.value)
    assert prepare(cfg, None, "random", "median", "tune", None) == tmp_path / "search"  # the same: continued
    url = build_config("digits", model="seed_cnn", out=str(tmp_path / "rdb"))
    prepare(url, None, "random", "median", "tune", "postgresql://me:secret@db.example/optuna")
    prepare(url, None, "random", "median", "tune", "postgresql://me:other@db.example/optuna")  # masked: the same
    with pytest.raises(CnnlabError, match="different storage"):
        prepare(url, None, "random", "median", "tune", None)


# -- crash safety and workers --------------------------------------------------------------------------------------
def finished(trials: list) -> list:
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and not t.user_attrs.get("surplus")]


def test_a_claimed_trial_is_not_stale_to_a_worker_on_another_machine(tmp_path, monkeypatch):
    """A new trial and a resumed one carry a fresh `beat` from the moment they are claimed (before the Heartbeat
    thread starts): a worker on another host must not take them over."""
    import optuna

    from cnnlab.tune import study as study_module
    from cnnlab.tune.study import claim_trial, is_stale, quiet_optuna

    quiet_optuna()
    study = optuna.create_study()
    dead = study.ask()  # its worker, on a third machine, stopped beating long ago
    dead.set_user_attr("owner", {"host": "gone-host", "pid": 1, "started": None})
    dead.set_user_attr("beat", time.time() - 10 * study_module.STALE_S)
    resumed = claim_trial(study, tmp_path, 2)
    new = claim_trial(study, tmp_path, 2)
    assert resumed.resumed and resumed.trial.number == 0 and not new.resumed and new.trial.number == 1
    monkeypatch.setattr(study_module.socket, "gethostname", lambda: "another-host")
    now = time.time()
    assert [is_stale(t, now) for t in study.get_trials(deepcopy=False)] == [False, False]


def test_kill_9_in_the_middle_of_a_trial_then_the_same_command_continues_the_study(tmp_path):
    """The search kills itself (SIGKILL) in the third trial, one step after that trial's first checkpoint (the end
    of epoch 1: 23 steps of 64 of the 1,438 digits); the rerun resumes trial 2 in its own folder (from that
    checkpoint) and runs the rest: 6 trials, none lost or twice."""
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "cnnlab", "tune", "digits", *BASE, "--epochs", "3", "--pruner", "none",
           "--trials", "6", "--out", str(out)]
    killed = subprocess.run(cmd, env={**env(), "CNNLAB_SIGNAL_AT": "step=24,signal=KILL,run=trials/0002"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = study_trials(out)
    assert [t.state.name for t in before] == ["COMPLETE", "COMPLETE", "RUNNING"]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = study_trials(out)
    assert [t.number for t in after] == [0, 1, 2, 3, 4, 5] and len(finished(after)) == 6
    assert [t.value for t in after[:2]] == [t.value for t in before[:2]]  # kept, not rerun
    assert after[2].user_attrs["resumed"] == 1 and "(resumed)" in r.stdout
    events = [json.loads(line) for line in (out / "trials" / "0002" / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["at"]) for e in events] == [("resume", "epoch 2, step 0")]  # from its checkpoint
    rows = (out / "trials" / "0002" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]  # every epoch once
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{i:04d}" for i in range(6)]
    record = json.loads((out / "tune.json").read_text())
    assert record["counts"]["COMPLETE"] == 6 and len(record["trials"]) == 6


def test_a_pruned_run_whose_worker_died_before_telling_the_study_is_told_pruned_on_resume(tmp_path, monkeypatch,
                                                                                         one_thread):
    """The worker dies after the pruned run finished (metrics.json written) but before study.tell: the worker that
    resumes the trial finds a finished run of 1 of 3 epochs, and tells PRUNED (from the run's events), not COMPLETE
    with a 1-epoch value."""
    import optuna
    from optuna.trial import Trial, TrialState

    from cnnlab.tune.space import parse_space
    from cnnlab.tune.study import quiet_optuna
    from cnnlab.tune.trial import run_trial

    class Died(BaseException):
        pass

    def die(*args, **kwargs):
        raise Died

    quiet_optuna()
    base = build_config("digits", model="seed_cnn", epochs=3, precision="fp32", batch_size=64, tensorboard=False)
    params = parse_space({"train.lr": {"choice": [1e-3]}}, base, "test")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # prunes
    trial = study.ask()
    monkeypatch.setattr(study, "tell", die)
    with pytest.raises(Died):
        run_trial(study, trial, False, base, params, tmp_path)
    monkeypatch.undo()
    assert json.loads((tmp_path / "trials" / "0000" / "metrics.json").read_text())["epochs_run"] == 1
    assert study.trials[0].state == TrialState.RUNNING
    outcome = run_trial(study, Trial(study, trial._trial_id), True, base, params, tmp_path)
    assert outcome.state == "PRUNED" and outcome.epochs == 1 and study.trials[0].state == TrialState.PRUNED


def test_two_workers_share_one_journal_file_and_finish_n_trials(tmp_path):
    out = tmp_path / "search"
    r = tune_cli("digits", *BASE, "--epochs", "3", "--trials", "6", "--workers", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    trials = study_trials(out)
    assert sorted(t.number for t in trials) == list(range(6)) and len(finished(trials)) == 6
    assert len({t.user_attrs["owner"]["pid"] for t in trials}) == 2  # both workers took trials
    lines = [line for line in r.stdout.splitlines() if re.match(r"trial +\d+ ", line)]
    assert len(lines) == 6 and "Traceback" not in r.stderr


# -- PostgreSQL: a real server, started here ---------------------------------------------------------------------
def postgres_bin() -> Path | None:
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on a free localhost port (as `nobody` when the tests run as root: initdb
    refuses root); yields its URL and stops it."""
    import pwd
    import shutil
    import socket
    import tempfile

    pytest.importorskip("psycopg2", reason="psycopg2-binary is needed for the PostgreSQL storage")
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg_env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True, env=pg_env, cwd=root)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                    "-w", "-t", "60", "start"], check=True, capture_output=True, env=pg_env, cwd=root)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, env=pg_env, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql_finish_n_trials(tmp_path, postgres_url):
    out = tmp_path / "search"
    r = tune_cli("digits", *BASE, "--epochs", "2", "--trials", "5", "--workers", "2", "--storage", postgres_url,
                 "--out", str(out))
    assert r.returncode == 0, r.stderr
    trials = study_trials(out, postgres_url)
    assert sorted(t.number for t in trials) == list(range(5)) and len(finished(trials)) == 5
    assert len({t.user_attrs["owner"]["pid"] for t in trials}) == 2
    settings = yaml.safe_load((out / "tune.yaml").read_text())
    assert settings["storage"] == postgres_url and not (out / "study.journal").exists()
    assert json.loads((out / "tune.json").read_text())["counts"]["COMPLETE"] >= 1


# -- compare -----------------------------------------------------------------------------------------------------
def test_compare_shows_the_differing_keys_and_the_best_and_refuses_other_val_splits(tmp_path):
    args = ["digits", *BASE, "--epochs", "1", "--quiet"]
    runs = [subprocess.Popen([sys.executable, "-m", "cnnlab", "train", *args, *extra, "--out", str(tmp_path / name)],
                             env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, extra in (("a", ["--lr", "0.0003"]), ("b", ["--lr", "0.003"]),
                                ("c", ["--lr", "0.003", "--seed", "5"]))]  # at once: start-up dominates
    assert [p.wait(timeout=300) for p in runs] == [0, 0, 0]
    r = run_cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["keys"] == ["train.lr"] and result["monitor"] == "val_accuracy"  # only what differs
    values = [row["value"] for row in result["rows"]]
    assert result["best"] == values.index(max(values))
    table = run_cli("compare", str(tmp_path / "a"), str(tmp_path / "b")).stdout
    assert "lr" in table and "best" in table and "seed" not in table
    r = run_cli("compare", str(tmp_path / "a"), str(tmp_path / "c"))  # another seed: another held-out split
    assert r.returncode == 2 and "cannot rank these runs: their val splits differ" in r.stderr
    assert r.stderr.count("\n") == 1


def test_confirm_reruns_the_top_configurations_with_other_seeds(tmp_path):
    out = tmp_path / "search"
    r = tune_cli("digits", *BASE, "--epochs", "1", "--trials", "3", "--confirm", "2", "--confirm-seeds", "2",
                 "--out", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "confirm.json").read_text())
    record = json.loads((out / "tune.json").read_text())
    complete = sorted((t for t in record["trials"] if t["state"] == "COMPLETE"), key=lambda t: -t["value"])
    assert [row["number"] for row in result["rows"]] == [t["number"] for t in complete[:2]]
    assert all(len(row["values"]) == 2 for row in result["rows"]) and "winner" in r.stdout
    folders = sorted(p.name for p in (out / "confirm").iterdir())
    assert folders == sorted(f"{row['number']:04d}-seed{s}" for row in result["rows"] for s in (1, 2))
    cfg = build_config(config=str(out / "confirmed.yaml"))
    assert cfg.train.seed == 1 and cfg.out is None


def test_in_a_log_the_table_shows_every_value_in_full(tmp_path):
    """Not a terminal (a log file, CI): rich would cut the columns to 80 characters (`0.00…`, `comp…`)."""
    import io

    import optuna
    from rich.console import Console

    from cnnlab.tune.results import print_table
    from cnnlab.tune.study import quiet_optuna

    quiet_optuna()
    study = optuna.create_study(direction="maximize")
    for i, lr in enumerate((0.00123456, 0.0456789, 0.000987654)):
        study.add_trial(optuna.trial.create_trial(
            params={"train.lr": lr, "train.schedule": ["onecycle", "cosine", "step"][i]},
            distributions={"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
                           "train.schedule": optuna.distributions.CategoricalDistribution(["onecycle", "cosine",
                                                                                           "step"])},
            value=0.9 + i / 100, user_attrs={"epochs": 3}))
    buffer = io.StringIO()
    console = Console(file=buffer, highlight=False)  # a file: not a terminal
    rows = [t for t in study.trials if t.state.name == "COMPLETE"]
    print_table(rows, "val_accuracy", console)
    text = buffer.getvalue()
    assert "…" not in text and "0.00123456" in text and "0.000987654" in text and "complete" in text
    assert "a pruned trial's: its last reported epoch's" in text


def test_a_pruned_trial_has_one_value_the_one_the_study_records(tmp_path, monkeypatch, one_thread):
    """The live line printed the run's best epoch, the table Optuna's value of a pruned trial (its last reported
    epoch): 0.9331 against 0.9078. Now both are the study's."""
    import optuna
    from optuna.trial import Trial

    from cnnlab.tune.space import parse_space
    from cnnlab.tune.study import quiet_optuna
    from cnnlab.tune.trial import run_trial

    quiet_optuna()
    report = Trial.report
    monkeypatch.setattr(Trial, "report", lambda self, value, step: report(self, value - 0.5, step))  # last != best
    base = build_config("digits", model="seed_cnn", epochs=3, precision="fp32", batch_size=64, tensorboard=False)
    params = parse_space({"train.lr": {"choice": [1e-3]}}, base, "test")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    outcome = run_trial(study, study.ask(), False, base, params, tmp_path)
    best = json.loads((tmp_path / "trials" / "0000" / "metrics.json").read_text())["best"]["val_accuracy"]
    assert outcome.state == "PRUNED" and outcome.value == study.trials[0].value == pytest.approx(best - 0.5)
