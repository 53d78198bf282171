"""Ray Train glue shared by the training jobs (jobs/train_*.py): arguments, schedule,
progress reports with a final checkpoint, and the TorchTrainer run. The training math
lives in plain-torch modules (densify/training.py, prior.py) and never imports Ray."""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

REPORT_EVERY = 100


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=2, help="torch threads follow this")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--storage", default=str(Path(tempfile.gettempdir()) / "raywarp-train"), help="Ray Train storage path")
    p.add_argument("--address", default=None, help="Ray address (default: start a local Ray)")


def cosine_schedule(optimiser, iterations: int):
    return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 0.5 * (1 + math.cos(math.pi * i / iterations)))


def worker_rng(seed: int) -> np.random.Generator:
    """Each worker draws its own data."""
    return np.random.default_rng([seed, ray.train.get_context().get_world_rank()])


def prepare(model: torch.nn.Module) -> torch.nn.Module:
    """DDP-wrap the model when there is more than one worker."""
    return ray.train.torch.prepare_model(model) if ray.train.get_context().get_world_size() > 1 else model


class Progress:
    """Averages the loss over REPORT_EVERY iterations, prints and reports it to Ray Train;
    at the last iteration rank 0 also reports a checkpoint written by `save(directory)`."""

    def __init__(self, iterations: int, metric: str, save: Callable[[Path], None]):
        self.iterations, self.metric, self.save = iterations, metric, save
        self.window, self.started = [], time.time()

    def add(self, it: int, loss: float) -> None:
        self.window.append(loss)
        if it % REPORT_EVERY and it != self.iterations:
            return
        metrics = {"iteration": it, self.metric: float(np.mean(self.window)), "seconds": time.time() - self.started}
        self.window = []
        print(f"iteration {it}: {self.metric} {metrics[self.metric]:.4f} ({metrics['seconds']:.0f} s)", flush=True)
        if it == self.iterations and ray.train.get_context().get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as tmp:
                self.save(Path(tmp))
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def fit(train_loop: Callable[[dict], None], config: dict, args, name: str):
    """Run `train_loop` on `args.workers` Ray Train workers; returns the Result."""
    if not ray.is_initialized():
        ray.init(address=args.address)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.use_gpu,
                                     resources_per_worker={"CPU": args.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=args.storage),
    )
    return trainer.fit()
