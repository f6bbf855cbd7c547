"""Scale out on PyTorch's own engine: `cnnlab train --nproc N` and `torchrun ... -m cnnlab train`.

- `launch`: N worker processes on this machine through torch.distributed's elastic launcher (what torchrun runs),
  each running the same `cnnlab train` command. A worker that dies stops the others at once (the launcher
  watches them every 0.1 s), and the job ends with one line naming the rank and how to resume.
- `start`: in a worker (torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...), the process group:
  gloo on the CPU, nccl on CUDA, a collective timeout of `distributed.timeout` seconds (not the 30-minute
  default), this rank's device and its share of the CPU threads. Ranks whose configs differ are refused.
- `agree`: something only rank 0 does (create the run folder), its result or its error on every rank.

What a distributed run means (cnnlab.train.dist, recorded under `resolved.distributed` in config.yaml): the batch
size is the global one, split as evenly as possible over the ranks; every rank takes its part of each global batch
of the single-process order; gradients are averaged weighted by each rank's part, so an update equals the
single-process one up to floating-point summation order (and per-rank batch-norm statistics, dropout and
augmentation draws); metrics are summed over the ranks; only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch

from cnnlab.config import Config
from cnnlab.errors import CnnlabError
from cnnlab.train import dist

LAUNCHED_ENV = "CNNLAB_LAUNCHED"  # set for workers of `launch`: they leave the failure message to it


class WorkerFailed(CnnlabError):
    """A worker process of the job died or failed (not a user mistake: exit code 1)."""

    exit_code = 1


class WorkersRefused(CnnlabError):
    """The workers stopped on a user mistake, which rank 0 has printed already (the CLI does not repeat it)."""

    printed = True

    def __init__(self) -> None:
        super().__init__("the workers stopped on a user error (rank 0 printed it above)")


def in_worker() -> bool:
    """Inside a process started by torchrun / `launch` (its environment names a world)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch(argv: list[str], nproc: int, run_dir: str) -> int:
    """Run `python -m cnnlab ARGV` in `nproc` processes on this machine; 0 when all finished."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    os.environ[LAUNCHED_ENV] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
    quiet_launcher_logs()
    try:
        elastic_launch(config, sys.executable)("-m", "cnnlab", *argv)
    except ChildFailedError as e:
        rank, failure = root_failure(e.failures)
        if failure.exitcode == 2:  # a user mistake: rank 0 printed it
            return 2
        raise WorkerFailed(f"worker rank {rank} {describe_exit(failure.exitcode)}; the other workers were stopped. "
                           f"Continue with: cnnlab train --resume {run_dir}") from None
    finally:
        os.environ.pop(LAUNCHED_ENV, None)
    return 0


def quiet_launcher_logs() -> None:
    """The elastic agent logs every start and stop at INFO / WARNING; a user sees only failures, once, from us."""
    import logging

    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def root_failure(failures: dict[int, Any]) -> tuple[int, Any]:
    """The rank that caused the stop: one killed by a signal, else one that did not just lose its peers."""
    def cause(item: tuple[int, Any]) -> tuple[int, int, int]:
        rank, f = item  # SIGTERM and exit code 1: stopped by the launcher, or lost their peers
        return (0 if f.exitcode < 0 and f.exitcode != -signal.SIGTERM else 1 if f.exitcode not in (1, -signal.SIGTERM)
                else 2, f.timestamp, rank)

    return min(failures.items(), key=cause)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def threads_per_rank(local_world: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, local_world))


def start(cfg: Config) -> torch.device | None:
    """Join the process group of a torchrun / `launch` worker; returns this rank's device (None: not a worker)."""
    if not in_worker() or dist.active():
        return None
    import torch.distributed as tdist

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    device = rank_device(cfg)
    cuda = device.type == "cuda"
    backend = cfg.distributed.backend if cfg.distributed.backend != "auto" else ("nccl" if cuda else "gloo")
    if backend == "nccl":  # NCCL reduces CUDA tensors only; the small CPU flags and counts go through gloo
        backend = "cpu:gloo,cuda:nccl"
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(threads_per_rank(local_world))
    tdist.init_process_group(backend, timeout=timedelta(seconds=cfg.distributed.timeout))
    try:
        check_same_config(cfg)
    except BaseException:
        # A process that exits with its process group alive has the group's C++ threads torn down at interpreter
        # exit, still joinable: std::terminate, SIGABRT (seen in about 1 refused rank of 5, whenever the other rank
        # was still inside the group). Leave the group first, so the refusal is exit code 2 every time.
        tdist.destroy_process_group()
        raise
    return device


def rank_device(cfg: Config) -> torch.device:
    """This rank's device: its local GPU (`--device cuda:N` too: one GPU per process), else the CPU."""
    if torch.cuda.is_available() and (cfg.train.device == "auto" or cfg.train.device.startswith("cuda")):
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def world_change_note(state: dict[str, Any] | None) -> str | None:
    """What changes when a run resumes with another number of processes than it was saved with."""
    if state is None:
        return None
    saved, now = int(state.get("world_size", 1)), dist.world_size()
    if saved == now:
        return None
    return (f"note: this run was saved with {saved} process(es) and resumes with {now}: the data order, the batches "
            "and the updates stay the same; the per-process batch changes, and dropout draws differ from an "
            "uninterrupted run, so the result is close to it but not bit for bit")


def stop() -> None:
    if dist.active():
        import torch.distributed as tdist

        tdist.destroy_process_group()


def fingerprint(cfg: Config) -> str:
    """What every rank must agree on: the config without where it runs and how much it prints."""
    data = cfg.to_dict()
    data.pop("verbose", None)
    data["train"].pop("device", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def check_same_config(cfg: Config) -> None:
    prints = dist.all_gather_object(fingerprint(cfg))
    if len(set(prints)) > 1:
        differ = [r for r, p in enumerate(prints) if p != prints[0]]
        raise CnnlabError(f"ranks {', '.join(map(str, differ))} run a different config than rank 0 (data, model, "
                          "seed or options): start every rank with the same command")


def agree(fn: Callable[[], Any]) -> Any:
    """fn() on rank 0 only; its result (or its CnnlabError) on every rank."""
    result: tuple[str, Any] = ("ok", None)
    if dist.is_writer():
        try:
            result = ("ok", fn())
        except CnnlabError as e:
            result = ("error", str(e))
    kind, value = dist.broadcast_object(result)
    if kind == "error":
        raise CnnlabError(value)
    return value


def check_supported(cfg: Config, device: torch.device) -> None:
    """Refuse what a distributed run cannot do (before any data is read)."""
    if not dist.active():
        return
    if cfg.transfer.gradual:
        raise CnnlabError("--set transfer.gradual=true changes which parameters train during the run, which "
                          "DistributedDataParallel cannot follow: train gradual unfreezing in one process")
    if cfg.distributed.sync_bn and device.type != "cuda":
        raise CnnlabError("--sync-bn needs GPUs (SyncBatchNorm has no CPU kernels); leave it off on the CPU")


def scaled_lr(cfg: Config, global_batch: int) -> tuple[float | None, dict[str, Any] | None]:
    """distributed.scale_lr: the linear scaling rule, lr x global batch / reference batch (Goyal et al. 2017)."""
    d = cfg.distributed
    if not d.scale_lr:
        return None, None
    from cnnlab.train.optim import resolve_lr

    base = resolve_lr(cfg.train.lr, cfg.train.optimizer)
    lr = base * global_batch / d.reference_batch
    return lr, {"rule": "linear", "base_lr": base, "global_batch": global_batch,
                "reference_batch": d.reference_batch, "lr": lr}


def describe_lr_rule(rule: dict[str, Any]) -> str:
    return (f"learning rate {rule['base_lr']:.3g} x global batch {rule['global_batch']} / {rule['reference_batch']} "
            f"= {rule['lr']:.3g} (distributed.scale_lr, the linear scaling rule)")


def record(cfg: Config, batch_size: int | str, lr: dict[str, Any] | None) -> dict[str, Any]:
    """How the run is split over the ranks, for config.yaml's `resolved.distributed`."""
    world = dist.world_size()
    per_rank = None
    if isinstance(batch_size, int):
        from cnnlab.data.loader import rank_slice

        per_rank = [b - a for a, b in (rank_slice(batch_size, r, world) for r in range(world))]
    import torch.distributed as tdist

    return {"world_size": world, "backend": tdist.get_backend() if dist.active() else None,
            "global_batch": batch_size, "per_rank_batch": per_rank, "timeout_s": cfg.distributed.timeout,
            "sync_bn": cfg.distributed.sync_bn, "lr_rule": lr or "none",
            "sharding": "each rank takes its contiguous part of every global batch of the single-process order"}
