"""Training the neuroexplicit densifier: batches with exact flow, loss, one optimiser step.

Plain torch, no Ray: `jobs/train_densifier.py` runs `train_steps` inside Ray Train
workers. Data comes from `raywarp.synthetic` (layers of real photographs, flat layers
with random affine motions and, with `motions` including "perspective", slanted planes
at different depths seen by a moving camera; exact flow); known-masks mix i.i.d. samples at 1–10 %
density and structured holes, as the published training and real pipeline masks do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raywarp import synthetic
from raywarp.densify import level_steps, network_fields
from raywarp.densify.network import DensifierUNet
from raywarp.densify.solver import pyramid_inpaint


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 3000
    batch: int = 8
    # Square crop sides, taken in turn: sides over 128 px get the extra coarse levels
    # inference gives large frames (`raywarp.densify.level_steps`).
    sizes: tuple[int, ...] = (96,)
    lr: float = 1e-3
    steps: tuple[int, ...] = (5, 15, 30, 45)
    seed: int = 0
    # Scene kinds (synthetic.MOTIONS). Adding "perspective" measured worse at 3000
    # iterations, on the perspective scenes too (docs/decisions.md).
    motions: tuple[str, ...] = ("affine",)
    init: str | None = None  # weights to start from (fine-tuning); None: random


def training_batch(rng: np.random.Generator, batch: int, size: int, motions=("affine",)) -> dict[str, torch.Tensor]:
    """A batch of (image, flow, known): image (B,3,S,S), exact flow (B,2,S,S), known (B,1,S,S)."""
    scene = synthetic.make_batch(int(rng.integers(2**31)), batch, size=(size, size), motions=motions)
    known = np.stack([synthetic.random_mask(rng, (size, size)) for _ in range(batch)])[:, None]
    return {"image": scene["frame0"], "flow": scene["flow"], "known": torch.from_numpy(known).float()}


def densify_with(model: DensifierUNet, image, flow, known, steps) -> torch.Tensor:
    """Differentiable neuroexplicit densification (the body of `densify` without the checks),
    with the extra coarse levels `densify` gives frames of this size."""
    field_fn = network_fields(model, image, known, flow * known)
    return pyramid_inpaint(flow * known, known, image, field_fn, steps=level_steps(*image.shape[-2:], steps))


def masked_epe(pred: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean end-point error over pixels with weight 1, per batch item then averaged."""
    err = (pred - gt).norm(dim=1, keepdim=True)
    return ((err * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)).mean()


def train_steps(model: DensifierUNet, optimiser, batch: dict[str, torch.Tensor], steps) -> float:
    """One optimisation step on a batch; returns the loss (mean EPE over the filled pixels)."""
    pred = densify_with(model, batch["image"], batch["flow"], batch["known"], steps)
    loss = masked_epe(pred, batch["flow"], 1 - batch["known"])
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimiser.step()
    return float(loss.detach())
