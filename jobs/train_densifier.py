"""Train the neuroexplicit flow densifier on Ray Train.

    python jobs/train_densifier.py                        # one CPU worker, local Ray
    ray job submit --working-dir . -- python jobs/train_densifier.py --workers 4 --use-gpu

Each worker draws its own scenes (real photographs moving by affines, or with
`--motions affine perspective` also as planes seen by a moving camera, by homographies;
exact flow, see raywarp.synthetic) and known-masks; gradients are averaged by DDP when
there is more than one worker. The result is written as safetensors (never pickled) with a
Markdown note beside it holding the exact command and the final losses.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import ray
import torch

from raywarp import ray_train, synthetic
from raywarp.densify.network import DEFAULT_WEIGHTS, DensifierUNet, load_densifier, save_densifier
from raywarp.densify.training import TrainConfig, train_steps, training_batch


def train_loop_per_worker(config: dict) -> None:
    cfg = TrainConfig(**config)
    torch.manual_seed(cfg.seed)  # same initial weights on every worker
    model = (load_densifier(cfg.init) if cfg.init else DensifierUNet()).train()
    net = ray_train.prepare(model)
    optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    schedule = ray_train.cosine_schedule(optimiser, cfg.iterations)
    rng = ray_train.worker_rng(cfg.seed)
    device = ray.train.torch.get_device()
    progress = ray_train.Progress(cfg.iterations, "epe", lambda d: save_densifier(model, d / "densifier.safetensors"))
    for it in range(1, cfg.iterations + 1):
        size = cfg.sizes[it % len(cfg.sizes)]
        batch = {k: v.to(device) for k, v in training_batch(rng, cfg.batch, size, cfg.motions).items()}
        progress.add(it, train_steps(net, optimiser, batch, cfg.steps))
        schedule.step()


def main(argv=None) -> int:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=defaults.iterations)
    p.add_argument("--batch", type=int, default=defaults.batch, help="scenes per worker per step")
    p.add_argument("--sizes", type=int, nargs="+", default=list(defaults.sizes),
                   help="square crop sides in pixels, taken in turn (over 128: with the extra coarse levels)")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--motions", nargs="+", choices=synthetic.MOTIONS, default=list(defaults.motions), help="scene kinds")
    p.add_argument("--init", type=Path, help="weights to fine-tune from (default: random initial weights)")
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    ray_train.add_cluster_args(p)
    args = p.parse_args(argv)

    if args.init is not None and not args.init.is_file():
        p.error(f"--init: no weights file at {args.init}")
    cfg = dataclasses.replace(defaults, iterations=args.iterations, batch=args.batch, sizes=tuple(args.sizes), lr=args.lr,
                              seed=args.seed, motions=tuple(args.motions), init=args.init and str(args.init.resolve()))
    result = ray_train.fit(train_loop_per_worker, dataclasses.asdict(cfg), args, "train_densifier")
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
