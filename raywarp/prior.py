"""The embedded default prior: a small conditional pixel-space UNet trained on GP noise.

Warped Diffusion fine-tunes its model on Gaussian-process noise (white-noise models
give unrealistic images from correlated noise) and conditions it on the corrupted
frame. This module defines raywarp's own small model of that kind and one training
step, in plain torch; `jobs/train_prior.py` runs the steps on Ray Train.

- Model: diffusers `UNet2DModel`, input = noisy image (3) + baseline restoration (3)
  + observed-mask (1), output x̂0 (`prediction_type="sample"`); convolutional only, so
  it runs at any size that is a multiple of 4.
- Data: patches of real photographs (synthetic.TRAIN_PHOTOS), degraded half the time
  by ×4 bicubic down-sampling, half by structured holes; the baseline is bicubic
  up-sampling or harmonic fill (raywarp.inverse).
- Noise: GP noise (RFF, `noise.gp_noise`) from a bank of large fields drawn once,
  cropped, flipped and rotated by 90° per sample (the kernel is stationary and
  isotropic, so every crop is again a sample of the same GP).
- Loss: x̂0 mean squared error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from raywarp import inverse, noise, synthetic
from raywarp.models import NOISE_SPEC_FILE

DEFAULT_DIR = Path(__file__).resolve().parent / "weights" / "prior"
NOISE_KINDS = ("gp", "white")


@dataclass(frozen=True)
class PriorTrainConfig:
    iterations: int = 3000
    batch: int = 16
    size: int = 48
    lr: float = 5e-4
    length_scale: float = 0.64
    num_features: int = 3000
    bank: int = 12  # GP fields of bank_size² drawn once
    bank_size: int = 128
    seed: int = 0
    noise: str = "gp"  # "gp": GP noise (Warped Diffusion's fine-tune); "white": i.i.d. noise, as public models

    def __post_init__(self):
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"noise: choose one of {NOISE_KINDS}, got {self.noise!r}")


def default_unet():
    """The default prior's architecture (random weights)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=48, in_channels=7, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64, 96), norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        add_attention=False,  # no global attention: resolution-agnostic and shift-equivariant but for GroupNorm
    )


def default_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                         clip_sample=False)


def gp_bank(cfg: PriorTrainConfig) -> torch.Tensor:
    """(bank, 3, S, S) GP noise fields, deterministic from the seed."""
    grid = noise.pixel_grid(cfg.bank_size, cfg.bank_size)
    return torch.cat([
        noise.gp_noise(noise.gp_features(cfg.seed * 1000 + i, 3, cfg.num_features, cfg.length_scale), grid)
        for i in range(cfg.bank)
    ])


def gp_crops(rng: np.random.Generator, bank: torch.Tensor, batch: int, size: int) -> torch.Tensor:
    out = []
    for _ in range(batch):
        field = bank[rng.integers(len(bank))]
        y, x = rng.integers(0, bank.shape[-1] - size + 1, 2)
        crop = field[:, y : y + size, x : x + size]
        crop = torch.rot90(crop, int(rng.integers(4)), (1, 2))
        out.append(crop.flip(2) if rng.random() < 0.5 else crop)
    return torch.stack(out)


def photo_patches(rng: np.random.Generator, batch: int, size: int, photos=synthetic.TRAIN_PHOTOS) -> torch.Tensor:
    """(batch, 3, size, size) random crops of the photographs at random scales, in [0, 1]."""
    import cv2

    out = []
    for _ in range(batch):
        img = synthetic.load_photo(photos[rng.integers(len(photos))])
        scale = rng.uniform(0.35, 1.0)
        side = min(int(size / scale), *img.shape[:2])
        y, x = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
        patch = cv2.resize(img[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        out.append(torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1))))
    return torch.stack(out).clamp(0, 1)


def degrade(rng: np.random.Generator, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half SR ×4 (bicubic), half structured holes: (baseline (B,3,H,W), observed-mask (B,1,H,W))."""
    b, _, h, w = clean.shape
    n_sr = b // 2
    sr = inverse.SuperResolution(4, "bicubic")
    base_sr = sr.baseline(sr.forward(clean[:n_sr]))
    mask = torch.from_numpy(np.stack([synthetic.hole_mask(rng, (h, w)) for _ in range(b - n_sr)]))[:, None]
    inp = inverse.Inpainting(mask)
    base_in = inp.baseline(inp.forward(clean[n_sr:]))
    return torch.cat([base_sr, base_in]), torch.cat([torch.ones(n_sr, 1, h, w), mask])


def x0_from_output(out, u, abar, prediction_type: str):
    """Network output → x̂0 for a batch with per-sample ᾱ (B,1,1,1)."""
    if prediction_type == "epsilon":
        return (u - (1 - abar).sqrt() * out) / abar.sqrt()
    if prediction_type == "v_prediction":
        return abar.sqrt() * u - (1 - abar).sqrt() * out
    return out


def training_noise(rng: np.random.Generator, bank: torch.Tensor | None, cfg: PriorTrainConfig) -> torch.Tensor:
    """(batch, 3, size, size) noise of the kind the model learns: GP crops of `bank`, or white."""
    if cfg.noise == "gp":
        return gp_crops(rng, bank, cfg.batch, cfg.size)
    return torch.from_numpy(rng.standard_normal((cfg.batch, 3, cfg.size, cfg.size), dtype=np.float32))


def training_step(unet, scheduler, optimiser, rng, bank, cfg: PriorTrainConfig) -> float:
    """One step of x̂0 regression under the config's noise (`bank`: `gp_bank`, or None
    for white noise); returns the loss.

    Works for any `UNet2DModel` raywarp can sample with: conditional (7 input channels:
    u, baseline, mask) or unconditional (3), any prediction type. The x̂0 loss is weighted
    by min(SNR, 5) / 5 (min-SNR-γ, Hang et al. 2023): the nearly-clean steps that decide
    the output count fully, the very noisy ones, where x̂0 is barely identifiable, less.
    """
    clean = photo_patches(rng, cfg.batch, cfg.size)
    x0 = clean * 2 - 1
    t = torch.from_numpy(rng.integers(0, scheduler.config.num_train_timesteps, cfg.batch))
    abar = scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    u = abar.sqrt() * x0 + (1 - abar).sqrt() * training_noise(rng, bank, cfg)
    x = u
    if unet.config.in_channels == 7:
        baseline, mask = degrade(rng, clean)
        x = torch.cat([u, baseline * 2 - 1, mask], 1)
    pred = x0_from_output(unet(x, t).sample[:, :3], u, abar, scheduler.config.prediction_type)
    snr = abar / (1 - abar)
    weight = snr.clamp(max=5.0) / 5.0
    loss = (weight * (pred - x0).square()).mean()
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    optimiser.step()
    return float(loss.detach())


def save_prior(unet, scheduler, directory: Path, cfg: PriorTrainConfig, notes: str) -> None:
    """A bare diffusers UNet folder (safetensors) + scheduler config + the noise it learned
    (`raywarp.models.noise_spec` reads it)."""
    directory.mkdir(parents=True, exist_ok=True)
    # float16 on disk halves the shipped size; loading casts back to the requested dtype.
    unet.to(torch.float16).save_pretrained(directory, safe_serialization=True)
    unet.to(torch.float32)
    scheduler.save_config(directory)
    spec = {"noise": cfg.noise, "length_scale": cfg.length_scale, "num_features": cfg.num_features} if cfg.noise == "gp" \
        else {"noise": "white"}
    (directory / NOISE_SPEC_FILE).write_text(json.dumps({**spec, "train_config": asdict(cfg)}, indent=1))
    (directory / "README.md").write_text(notes)
