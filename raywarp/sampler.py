"""Warped sampling: restore a clip of T frames with an image diffusion model, consistently.

The sampler owns the loop (deterministic DDIM, η = 0) and how frames are tied together:

    mode="independent"  fresh white noise per frame (the per-frame baseline)
    mode="fixed"        the same white noise for every frame
    mode="gp-warp"      Gaussian-process noise warped along the flow (exact: frame t's
                        noise is the same GP evaluated where its pixels came from)
    mode="warped"       gp-warp plus equivariance self-guidance (Warped Diffusion, Alg. 1)

Self-guidance: after each step, frame j's state moves against ∇_{u_j} e_j with
    e_j = Σ M ⊙ (warp(x̂0_j, f_{j−1→j}) − x̂0_{j−1})² + Σ M' ⊙ (warp(x̂0_j, f_{j+1→j}) − x̂0_{j+1})²,
the gradient taken through the denoiser, neighbours' predictions held fixed. Unlike the
paper, both neighbours count (so a clip is pulled toward anchors at both ends),
occluded pixels are masked out by the forward–backward check (M, M'), and the step is
normalised (Gauss–Newton, see `gauss_newton_step`): λ is the fraction of the
inconsistency removed per step, so one λ works for any model and noise level.

Anchors (cross-shard stitching): the caller may fix the first and/or last frame of the
clip to a known image (a frame a neighbouring unit already restored). Its x̂0 is that
image at every step, so the clip's next frame is guided toward it exactly as interior
frames are guided toward their neighbours, and it is output unchanged.

Measurement consistency: pixel models project x̂0 onto the measurements after every
prediction (DDNM: x̂0 + A⁺(y − A x̂0)) or follow the DPS gradient; every model gets a
final projection of the decoded output, so outputs agree with the measurements.

Frames stream through the denoiser `batch_size` at a time, so a clip's length is not
bounded by accelerator memory. Shapes: frames (T, 3, H, W) in [0, 1]; u-space tensors
(T, C, h, w) with H = h · scale_factor; flows (T−1, 2, h, w) in u-space pixels (the grid
the model samples on: `raywarp.flow.resize_flow` brings output-resolution flows there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from raywarp import flow as rflow
from raywarp import noise as rnoise
from raywarp.tensors import as_batch

MODES = ("independent", "fixed", "gp-warp", "warped")
SCHEDULES = ("constant", "linear", "cosine")
CONSISTENCY = ("project", "dps", "none")


@dataclass(frozen=True)
class SamplerConfig:
    mode: str = "warped"
    steps: int = 25
    guidance: float = 0.1  # λ: fraction of the inconsistency removed per step (measured best of 0.1, 0.3, 1)
    guidance_schedule: str = "constant"  # λ_t over the steps: constant, linear or cosine decay to 0
    consistency: str = "project"
    dps_scale: float = 1.0
    # 1: from pure noise; s < 1: from the baseline noised to timestep s·T (SDEdit). 0.4: the
    # shipped prior beats harmonic fill from there, and not from pure noise (measured, README).
    strength: float = 0.4
    batch_size: int = 8  # frames per denoiser call
    length_scale: float = 0.64  # GP ε in u-space pixels (paper: 0.64 px on a 128² latent)
    num_features: int = 3000

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: unknown sampling mode {self.mode!r}; choose one of {MODES}")
        if self.guidance_schedule not in SCHEDULES:
            raise ValueError(f"guidance_schedule: choose one of {SCHEDULES}, got {self.guidance_schedule!r}")
        if self.consistency not in CONSISTENCY:
            raise ValueError(f"consistency: choose one of {CONSISTENCY}, got {self.consistency!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength: must lie in (0, 1], got {self.strength}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance: λ must be finite and >= 0, got {self.guidance}")


@dataclass
class ClipResult:
    frames: torch.Tensor  # (T, 3, H, W) in [0, 1]


def guidance_weights(config: SamplerConfig) -> list[float]:
    """λ_t for each of the `steps` steps."""
    n = config.steps
    if config.guidance_schedule == "constant":
        return [config.guidance] * n
    if config.guidance_schedule == "linear":
        return [config.guidance * (1 - i / n) for i in range(n)]
    return [config.guidance * 0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)]


def start_timesteps(denoiser, config: SamplerConfig) -> torch.Tensor:
    """`steps` descending timesteps; with strength s < 1 those of a longer schedule below s·T."""
    if config.strength == 1:
        return denoiser.timesteps(config.steps)
    full = denoiser.timesteps(min(denoiser.num_train_timesteps, math.ceil(config.steps / config.strength)))
    return full[full < config.strength * denoiser.num_train_timesteps][: config.steps]


def initial_noise(config: SamplerConfig, shape, seed: int, frame_index: torch.Tensor, coords: torch.Tensor | None):
    """Initial noise (T, C, h, w) for the mode.

    White noise is a function of (seed, global frame index), so clips sharing a frame draw
    the same noise for it; GP noise is a function of (seed, the frame's GP coordinates).
    """
    t, c, h, w = shape
    if config.mode == "independent":
        return torch.stack([rnoise.white_noise(int(seed) * 1_000_003 + int(i), (c, h, w)) for i in frame_index])
    if config.mode == "fixed":
        return rnoise.white_noise(int(seed), (c, h, w)).expand(t, c, h, w).clone()
    features = rnoise.gp_features(int(seed), c, num_features=config.num_features, length_scale=config.length_scale)
    return torch.cat([rnoise.gp_noise(features, coords[i : i + 1]) for i in range(t)])


def chain_coords(backward_flows: torch.Tensor, height: int, width: int, start: torch.Tensor | None = None) -> torch.Tensor:
    """GP coordinates of every frame (T, 2, h, w) from T−1 backward flows f_{t→t−1}.

    Frame 0 takes `start` (its coordinates in the video's chain, default the identity grid).
    """
    coords = [start if start is not None else rnoise.pixel_grid(height, width)]
    for f in backward_flows:
        coords.append(rnoise.warp_coords(coords[-1], f[None]))
    return torch.cat(coords)


class _Clip:
    """Per-clip tensors the step loop needs, prepared once (u-space flows and masks)."""

    def __init__(self, flows_fwd, flows_bwd, device):
        self.fwd = flows_fwd.to(device)
        self.bwd = flows_bwd.to(device)
        # Pixels of frame j−1 whose match in frame j is reliable, and vice versa.
        self.mask_prev = rflow.consistency_mask(self.fwd, self.bwd)
        self.mask_next = rflow.consistency_mask(self.bwd, self.fwd)


def _self_guidance_energy(x0, idx, x0_all, clip: _Clip) -> torch.Tensor:
    """e_j for the frames idx, (len(idx),): masked warp differences to both neighbours (held fixed).

    Warps are bicubic: a bilinear warp low-passes sub-pixel shifts, so matching it to a
    sharp neighbour drives frame j's high frequencies up (measured: SR ×4 under zoom
    lost 5 dB with bilinear, none with bicubic; README).
    """
    energies = []
    t_total = x0_all.shape[0]
    for k, j in enumerate(idx):
        e = x0.new_zeros(())
        if j > 0:  # predecessor: warp(x0_j, f_{j−1→j}) ≈ x0_{j−1} on frame j−1's reliable pixels
            d = rflow.warp(x0[k : k + 1], clip.fwd[j - 1 : j], mode="bicubic") - x0_all[j - 1 : j]
            e = e + (clip.mask_prev[j - 1 : j] * d.square()).sum()
        if j < t_total - 1:  # successor: warp(x0_j, f_{j+1→j}) ≈ x0_{j+1}
            d = rflow.warp(x0[k : k + 1], clip.bwd[j : j + 1], mode="bicubic") - x0_all[j + 1 : j + 2]
            e = e + (clip.mask_next[j : j + 1] * d.square()).sum()
        energies.append(e)
    return torch.stack(energies)


def gauss_newton_step(energy: torch.Tensor, u: torch.Tensor, retain: bool = False, trust: float = 0.1) -> torch.Tensor:
    """Per-frame step 2 e_j ∇e_j / |∇e_j|² for energies e_j = |r_j|² of residuals r_j(u_j),
    its RMS capped at `trust` (a trust region).

    The paper's update is u ← u − λ∇e; its useful size depends on the denoiser's Jacobian
    J (≈ 1/√ᾱ for ε-models early on, where a raw gradient step explodes). With ∇e = 2Jᵀr,
    this step is the Gauss–Newton step along the gradient: to first order it removes the
    fraction λ of the inconsistency r whatever the model, noise level or image size. Where
    the prediction barely depends on u (J ≈ 0, e.g. a conditional model at high noise),
    that step would be unbounded: the trust region keeps it to a small nudge.
    """
    grad = torch.autograd.grad(energy.sum(), u, retain_graph=retain)[0]
    shape = (-1, *([1] * (grad.dim() - 1)))
    norm2 = grad.flatten(1).square().sum(1).view(shape)
    step = (2 * energy.detach().view_as(norm2) / norm2.clamp_min(1e-12)) * grad
    rms = step.flatten(1).square().mean(1).sqrt().view(shape)
    return step * (trust / rms.clamp_min(trust))


def check_clip(observations, flows_fwd, flows_bwd):
    """Validate a clip's inputs; returns them as tensors."""
    y = as_batch(observations, "observations")
    if y.shape[0] == 0:
        raise ValueError("observations: empty clip")
    t = y.shape[0]
    fwd = as_batch(flows_fwd, "flows_fwd", channels=2) if t > 1 else torch.zeros(0, 2, 1, 1)
    bwd = as_batch(flows_bwd, "flows_bwd", channels=2) if t > 1 else torch.zeros(0, 2, 1, 1)
    for name, f in (("flows_fwd", fwd), ("flows_bwd", bwd)):
        if t > 1 and f.shape[0] != t - 1:
            raise ValueError(f"{name}: need {t - 1} flows for {t} frames, got {f.shape[0]}")
    return y, fwd, bwd


def sample_clip(
    denoiser,
    operator,
    observations,
    flows_fwd,
    flows_bwd,
    seed: int,
    config: SamplerConfig = SamplerConfig(),
    frame_index=None,
    noise_coords: torch.Tensor | None = None,
    start_anchor: torch.Tensor | None = None,
    end_anchor: torch.Tensor | None = None,
    device="cpu",
) -> ClipResult:
    """Restore a clip.

    observations: (T, …) measurements y of the T frames (LR frames for SR, masked frames
    for inpainting), as `operator` defines them. flows_fwd / flows_bwd: (T−1, 2, h, w)
    flows t→t+1 and t+1→t on the model's grid (output size / scale_factor), already dense
    (see `raywarp.flow.restoration_flows`). seed: per video. frame_index: (T,) global
    frame numbers (default 0..T−1). noise_coords: (T, 2, h, w) GP coordinates in the
    video's chain (default: chained from the identity at frame 0). start_anchor /
    end_anchor: (3, H, W) known images of frames 0 / T−1 (restored by a neighbouring unit).
    """
    y, fwd, bwd = check_clip(observations, flows_fwd, flows_bwd)
    t = y.shape[0]
    height, width = operator.output_size(y)
    s = denoiser.scale_factor
    if height % (s * denoiser.multiple) or width % (s * denoiser.multiple):
        raise ValueError(
            f"observations: output size {(height, width)} must be a multiple of {s * denoiser.multiple} "
            "for this model; pad the measurement (raywarp.inverse) and crop the result"
        )
    h, w, c = height // s, width // s, denoiser.channels
    if fwd.shape[0] and tuple(fwd.shape[-2:]) != (h, w):
        raise ValueError(f"flows_fwd: flows must be on the model's grid {(h, w)} (output size / {s}), "
                         f"got {tuple(fwd.shape[-2:])}; see raywarp.flow.resize_flow")
    frame_index = torch.arange(t) if frame_index is None else torch.as_tensor(frame_index)
    timesteps = start_timesteps(denoiser, config)
    known = {j: a for j, a in ((0, start_anchor), (t - 1, end_anchor)) if a is not None}
    for j, a in known.items():
        if tuple(a.shape) != (3, height, width):
            raise ValueError(f"anchor for frame {j}: expected an image of shape {(3, height, width)}, got {tuple(a.shape)}")
    anchors = {j: denoiser.encode(a[None].to(device)) for j, a in known.items()}  # their x̂0, fixed
    if config.mode in ("gp-warp", "warped") and noise_coords is None:
        noise_coords = chain_coords(bwd.double(), h, w)

    y = y.to(device)
    baseline = operator.baseline(y)
    info = {"task": operator.name, "scale": getattr(operator, "scale", 1), "y": y, "baseline": baseline,
            "mask": operator.known(y)}
    clip = _Clip(fwd, bwd, device) if t > 1 else None
    spans = [(i, min(i + config.batch_size, t)) for i in range(0, t, config.batch_size)]
    u = initial_noise(config, (t, c, h, w), seed, frame_index, noise_coords).to(device)
    abar = denoiser.alphas_cumprod
    if config.strength < 1:  # refine the classical restoration instead of starting from noise
        a0 = float(abar[timesteps[0]])
        start = torch.cat([denoiser.encode(baseline[a:b]) for a, b in spans])
        u = math.sqrt(a0) * start + math.sqrt(1 - a0) * u
    lambdas = guidance_weights(config) if config.mode == "warped" and t > 1 else [0.0] * config.steps
    lambdas = lambdas[: len(timesteps)]
    project_each_step = config.consistency == "project" and denoiser.space == "pixel"
    dps = config.consistency == "dps"

    batches = [list(range(a, b)) for a, b in spans]
    ops = [operator.select(a, b) for a, b in spans]  # per-frame masks follow their frames
    conds = [denoiser.condition(y[a:b], {k: (v[a:b] if torch.is_tensor(v) else v) for k, v in info.items()})
             for a, b in spans]

    def predict(u_b, ti, idx, cond, op):
        x0 = denoiser.predict_x0(u_b, ti, cond)
        if denoiser.space == "pixel":  # DDIM's clip_sample: images live in [-1, 1]
            x0 = x0.clamp(-1, 1)
        if project_each_step:
            x0 = denoiser.encode(op.project(denoiser.decode(x0), y[idx]))
        for k, j in enumerate(idx):  # an anchored frame is known: its x̂0 is the anchor
            if j in anchors:
                x0 = torch.cat([x0[:k], anchors[j].to(x0), x0[k + 1 :]])
        return x0

    for step, ti in enumerate(timesteps.tolist()):
        a_t = float(abar[ti])
        a_prev = float(abar[timesteps[step + 1]]) if step + 1 < len(timesteps) else 1.0
        lam = lambdas[step]
        need_grad = lam > 0 or dps
        if lam > 0:  # neighbours' predictions at this step, held fixed in the energy
            with torch.no_grad():
                x0_all = torch.cat([predict(u[idx], ti, idx, cond, op) for idx, cond, op in zip(batches, conds, ops)])
        new_u, x0_list = [], []
        for idx, cond, op in zip(batches, conds, ops):
            u_b = u[idx].detach().requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                x0 = predict(u_b, ti, idx, cond, op)
                step_u = torch.zeros_like(u_b)
                if lam > 0:
                    e = _self_guidance_energy(x0, idx, x0_all, clip)
                    if e.requires_grad:
                        step_u = step_u + lam * gauss_newton_step(e, u_b, retain=dps)
                if dps:
                    resid = op.forward(denoiser.decode(x0)) - y[idx]
                    step_u = step_u + config.dps_scale * torch.autograd.grad(resid.square().sum().sqrt(), u_b)[0]
            x0 = x0.detach()
            eps = (u_b.detach() - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
            u_next = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps - step_u
            new_u.append(u_next)
            x0_list.append(x0)
        u = torch.cat(new_u)
        x0_step = torch.cat(x0_list)

    with torch.no_grad():
        images = torch.cat([denoiser.decode(x0_step[idx]) for idx in batches])
        images = consistent_images(operator, images, y)
    for j, a in known.items():  # known frames are output as given
        images[j] = a.to(images)
    return ClipResult(images.cpu())


def consistent_images(operator, images: torch.Tensor, y: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Nearest images that agree with the measurements and lie in [0, 1].

    Alternating projections (POCS) onto the measurement-consistent affine set and the
    box [0, 1]: both convex, so the iterates approach their intersection; one projection
    followed by a clamp would undo consistency wherever the clamp bites.
    """
    for _ in range(iterations):
        images = operator.project(images, y).clamp(0, 1)
    return images
