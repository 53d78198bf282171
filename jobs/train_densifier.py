"""Train the neuroexplicit flow densifier on Ray Train.

    python jobs/train_densifier.py                        # one CPU worker, local Ray
    ray job submit --working-dir . -- python jobs/train_densifier.py --workers 4 --use-gpu

Each worker draws its own scenes (real photographs with exact affine flow, see
raywarp.synthetic) and known-masks; gradients are averaged by DDP when there is more
than one worker. The result is written as safetensors (never pickled) with a
Markdown note beside it holding the exact command and the final losses.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raywarp.densify.network import DEFAULT_WEIGHTS, DensifierUNet, load_densifier, save_densifier
from raywarp.densify.training import TrainConfig, train_steps, training_batch


def train_loop_per_worker(config: dict) -> None:
    cfg = TrainConfig(**config)
    ctx = ray.train.get_context()
    torch.manual_seed(cfg.seed)  # same initial weights on every worker
    model = DensifierUNet()
    net = ray.train.torch.prepare_model(model) if ctx.get_world_size() > 1 else model
    optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 0.5 * (1 + math.cos(math.pi * i / cfg.iterations)))
    rng = np.random.default_rng([cfg.seed, ctx.get_world_rank()])
    device = ray.train.torch.get_device()
    window, started = [], time.time()
    for it in range(1, cfg.iterations + 1):
        batch = {k: v.to(device) for k, v in training_batch(rng, cfg.batch, cfg.size).items()}
        window.append(train_steps(net, optimiser, batch, cfg.steps))
        schedule.step()
        if it % 100 == 0 or it == cfg.iterations:
            metrics = {"iteration": it, "epe": float(np.mean(window)), "seconds": time.time() - started}
            window = []
            print(f"iteration {it}: training EPE {metrics['epe']:.4f} ({metrics['seconds']:.0f} s)", flush=True)
            if it == cfg.iterations and ctx.get_world_rank() == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    save_densifier(model, Path(tmp) / "densifier.safetensors")
                    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)


def main(argv=None) -> int:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=defaults.iterations)
    p.add_argument("--batch", type=int, default=defaults.batch, help="scenes per worker per step")
    p.add_argument("--size", type=int, default=defaults.size, help="square crop size in pixels")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=2, help="torch threads follow this")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--storage", default=str(Path(tempfile.gettempdir()) / "raywarp-train"), help="Ray Train storage path")
    p.add_argument("--address", default=None, help="Ray address (default: start a local Ray)")
    args = p.parse_args(argv)

    cfg = dataclasses.replace(defaults, iterations=args.iterations, batch=args.batch, size=args.size, lr=args.lr, seed=args.seed)
    ray.init(address=args.address)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dataclasses.asdict(cfg),
        scaling_config=ScalingConfig(
            num_workers=args.workers, use_gpu=args.use_gpu, resources_per_worker={"CPU": args.cpus_per_worker}
        ),
        run_config=RunConfig(name="train_densifier", storage_path=args.storage),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as ckpt:
        model = load_densifier(Path(ckpt) / "densifier.safetensors")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in ["jobs/train_densifier.py", *sys.argv[1:]])
    save_densifier(model, args.out, extra={"command": command, "final_epe": result.metrics["epe"]})
    params = sum(p.numel() for p in model.parameters())
    args.out.with_suffix(".md").write_text(
        f"# {args.out.name}\n\nNeuroexplicit flow densifier, {params:,} parameters, "
        f"trained by:\n\n    {command}\n\nconfig: {dataclasses.asdict(cfg)}\n\n"
        f"final training EPE (mean over the last 100 iterations, filled pixels): {result.metrics['epe']:.4f}\n"
        f"training time: {result.metrics['seconds'] / 60:.1f} min with {args.workers} worker(s)\n"
    )
    print(f"wrote {args.out} ({params:,} parameters); final training EPE {result.metrics['epe']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
