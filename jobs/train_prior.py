"""Train (or fine-tune) a pixel-space diffusers UNet on GP noise (or white noise), on Ray Train.

    python jobs/train_prior.py                               # the default prior, from scratch
    python jobs/train_prior.py --noise white --out DIR        # a white-noise model, as public checkpoints are
    python jobs/train_prior.py --model path/to/unet --out path/to/tuned   # fine-tune a local UNet2DModel
    ray job submit --working-dir . -- python jobs/train_prior.py --workers 4 --use-gpu

As in Warped Diffusion, the model learns to denoise Gaussian-process noise instead of
white noise, so warped GP noise is in-distribution at sampling time (see raywarp.prior).
`--noise white` trains on i.i.d. noise instead, the kind of model the white-warp modes
serve. Output: a diffusers UNet folder (safetensors), its scheduler config, the noise
spec (`raywarp_noise.json`: the sampler's default mode and GP length scale) and a README
with the exact command.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import torch

from raywarp import prior, ray_train


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
    return denoiser.unet.train().requires_grad_(True), scheduler  # the loader freezes it for inference


def train_loop_per_worker(config: dict) -> None:
    cfg = prior.PriorTrainConfig(**config["train"])
    torch.manual_seed(cfg.seed)
    unet, scheduler = load_unet_and_scheduler(config["model"])
    net = ray_train.prepare(unet)
    optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = ray_train.cosine_schedule(optimiser, cfg.iterations)
    rng = ray_train.worker_rng(cfg.seed)
    bank = prior.gp_bank(cfg) if cfg.noise == "gp" else None

    def save(directory: Path) -> None:
        unet.save_pretrained(directory, safe_serialization=True)
        scheduler.save_config(directory)

    progress = ray_train.Progress(cfg.iterations, "loss", save)
    for it in range(1, cfg.iterations + 1):
        progress.add(it, prior.training_step(net, scheduler, optimiser, rng, bank, cfg))
        schedule.step()


def main(argv=None) -> int:
    d = prior.PriorTrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local UNet2DModel folder to fine-tune (default: train the default prior)")
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--noise", choices=prior.NOISE_KINDS, default=d.noise, help="the noise the model learns to remove")
    p.add_argument("--length-scale", type=float, default=d.length_scale, help="GP ε in pixels")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--bank", type=int, default=d.bank, help="GP noise fields drawn once and cropped")
    p.add_argument("--out", type=Path, default=prior.DEFAULT_DIR)
    ray_train.add_cluster_args(p)
    args = p.parse_args(argv)
    cfg = dataclasses.replace(d, iterations=args.iterations, batch=args.batch, size=args.size, lr=args.lr,
                              length_scale=args.length_scale, seed=args.seed, bank=args.bank, noise=args.noise)
    result = ray_train.fit(train_loop_per_worker, {"train": dataclasses.asdict(cfg), "model": args.model}, args, "train_prior")
    from diffusers import DDIMScheduler, UNet2DModel

    with result.checkpoint.as_directory() as ckpt:
        unet = UNet2DModel.from_pretrained(ckpt, use_safetensors=True, local_files_only=True)
        scheduler = DDIMScheduler.from_pretrained(ckpt, local_files_only=True)
    command = "python " + " ".join(shlex.quote(a) for a in ["jobs/train_prior.py", *sys.argv[1:]])
    params = sum(q.numel() for q in unet.parameters())
    noise = f"GP noise (length scale {cfg.length_scale} px)" if cfg.noise == "gp" else "white noise"
    notes = (f"# raywarp prior\n\nConditional pixel-space UNet2DModel ({params:,} parameters) trained on "
             f"{noise} by:\n\n    {command}\n\nconfig: {dataclasses.asdict(cfg)}\n\n"
             f"final loss (mean of the last 100 iterations): {result.metrics['loss']:.4f}; "
             f"training time {result.metrics['seconds'] / 60:.1f} min with {args.workers} worker(s)\n")
    prior.save_prior(unet, scheduler, args.out, cfg, notes)
    print(f"wrote {args.out} ({params:,} parameters); final loss {result.metrics['loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
