"""Train (or fine-tune) a pixel-space diffusers UNet on GP noise, on Ray Train.

    python jobs/train_prior.py                               # the default prior, from scratch
    python jobs/train_prior.py --model path/to/unet --out path/to/tuned   # fine-tune a local UNet2DModel
    ray job submit --working-dir . -- python jobs/train_prior.py --workers 4 --use-gpu

As in Warped Diffusion, the model learns to denoise Gaussian-process noise instead of
white noise, so warped GP noise is in-distribution at sampling time (see raywarp.prior).
Output: a diffusers UNet folder (safetensors), its scheduler config, the GP parameters
and a README with the exact command.
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

from raywarp import prior


def load_unet_and_scheduler(model: str | None):
    """The UNet to train and its scheduler: the default architecture, or a local UNet2DModel folder."""
    if model is None:
        return prior.default_unet(), prior.default_scheduler()
    from diffusers import DDIMScheduler, UNet2DModel

    from raywarp.models import load_denoiser

    denoiser = load_denoiser(model)  # local-only, safetensors-only checks, scheduler resolution
    if not isinstance(getattr(denoiser, "unet", None), UNet2DModel):
        raise ValueError(f"--model: {model} is not a pixel-space UNet2DModel; this job fine-tunes those")
    scheduler = DDIMScheduler(num_train_timesteps=denoiser.num_train_timesteps, prediction_type=denoiser.prediction_type)
    scheduler.alphas_cumprod = denoiser.alphas_cumprod.float()
    return denoiser.unet.train(), scheduler


def train_loop_per_worker(config: dict) -> None:
    cfg = prior.PriorTrainConfig(**config["train"])
    ctx = ray.train.get_context()
    torch.manual_seed(cfg.seed)
    unet, scheduler = load_unet_and_scheduler(config["model"])
    net = ray.train.torch.prepare_model(unet) if ctx.get_world_size() > 1 else unet
    optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 0.5 * (1 + math.cos(math.pi * i / cfg.iterations)))
    rng = np.random.default_rng([cfg.seed, ctx.get_world_rank()])
    bank = prior.gp_bank(cfg)
    window, started = [], time.time()
    for it in range(1, cfg.iterations + 1):
        window.append(prior.training_step(net, scheduler, optimiser, rng, bank, cfg))
        schedule.step()
        if it % 100 == 0 or it == cfg.iterations:
            metrics = {"iteration": it, "loss": float(np.mean(window)), "seconds": time.time() - started}
            window = []
            print(f"iteration {it}: loss {metrics['loss']:.4f} ({metrics['seconds']:.0f} s)", flush=True)
            if it == cfg.iterations and ctx.get_world_rank() == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    unet.save_pretrained(tmp, safe_serialization=True)
                    scheduler.save_config(tmp)
                    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)


def main(argv=None) -> int:
    d = prior.PriorTrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local UNet2DModel folder to fine-tune (default: train the default prior)")
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--length-scale", type=float, default=d.length_scale, help="GP ε in pixels")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=2)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--out", type=Path, default=prior.DEFAULT_DIR)
    p.add_argument("--storage", default=str(Path(tempfile.gettempdir()) / "raywarp-train"))
    p.add_argument("--address", default=None)
    args = p.parse_args(argv)
    cfg = dataclasses.replace(d, iterations=args.iterations, batch=args.batch, size=args.size, lr=args.lr,
                              length_scale=args.length_scale, seed=args.seed)
    ray.init(address=args.address)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": dataclasses.asdict(cfg), "model": args.model},
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.use_gpu,
                                     resources_per_worker={"CPU": args.cpus_per_worker}),
        run_config=RunConfig(name="train_prior", storage_path=args.storage),
    )
    result = trainer.fit()
    from diffusers import DDIMScheduler, UNet2DModel

    with result.checkpoint.as_directory() as ckpt:
        unet = UNet2DModel.from_pretrained(ckpt, use_safetensors=True, local_files_only=True)
        scheduler = DDIMScheduler.from_pretrained(ckpt, local_files_only=True)
    command = "python " + " ".join(shlex.quote(a) for a in ["jobs/train_prior.py", *sys.argv[1:]])
    params = sum(q.numel() for q in unet.parameters())
    notes = (f"# raywarp default prior\n\nConditional pixel-space UNet2DModel ({params:,} parameters) trained on "
             f"GP noise (length scale {cfg.length_scale} px) by:\n\n    {command}\n\nconfig: {dataclasses.asdict(cfg)}\n\n"
             f"final loss (mean of the last 100 iterations): {result.metrics['loss']:.4f}; "
             f"training time {result.metrics['seconds'] / 60:.1f} min with {args.workers} worker(s)\n")
    prior.save_prior(unet, scheduler, args.out, cfg, notes)
    print(f"wrote {args.out} ({params:,} parameters); final loss {result.metrics['loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
