"""Warped sampling: restore a clip of T frames with an image diffusion model, consistently.

The sampler owns the loop (deterministic DDIM, η = 0) and how frames are tied together:

    mode="independent"  fresh white noise per frame (the per-frame baseline)
    mode="fixed"        the same white noise for every frame
    mode="gp-warp"      Gaussian-process noise warped along the flow (exact: frame t's
                        noise is the same GP evaluated where its pixels came from)
    mode="warped"       gp-warp plus equivariance self-guidance (Warped Diffusion, Alg. 1)
    mode="white-warp"   white noise warped along the flow, every pixel exactly N(0, 1)
                        (`noise.white_noise_at`: for models trained on white noise)
    mode="white-warped" white-warp plus self-guidance

Self-guidance: after each step, frame j's state moves against ∇_{u_j} e_j with
    e_j = Σ M ⊙ (warp(x̂0_j, f_{j−1→j}) − x̂0_{j−1})² + Σ M' ⊙ (warp(x̂0_j, f_{j+1→j}) − x̂0_{j+1})²,
the gradient taken through the denoiser, neighbours' predictions held fixed. Unlike the
paper, both neighbours count (so a clip is pulled toward anchors at both ends),
occluded pixels are masked out by the forward–backward check (M, M'), and the step is
normalised (Gauss–Newton, see `gauss_newton_step`): λ is the fraction of the
inconsistency removed per step, so one λ works for any model and noise level.
`guidance_method="x0"` takes that step on x̂0_j itself (the denoiser's Jacobian taken
as the identity) and continues DDIM from the moved x̂0: no backward pass through the
network. Either way every frame goes through the network once per step: a batch's
neighbours are its own predictions and the previous batch's, plus one lookahead frame
per batch boundary.

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
from typing import Callable

import torch

from raywarp import flow as rflow
from raywarp import noise as rnoise
from raywarp.tensors import as_batch, unchecked

MODES = ("independent", "fixed", "gp-warp", "warped", "white-warp", "white-warped")
GUIDED = ("warped", "white-warped")  # the modes with self-guidance
NOISE_OF_MODE = {"gp-warp": "gp", "warped": "gp", "white-warp": "white", "white-warped": "white"}  # warped noise
GUIDANCE_METHODS = ("gradient", "x0")
SCHEDULES = ("constant", "linear", "cosine")
CONSISTENCY = ("project", "dps", "none")


@dataclass(frozen=True)
class SamplerConfig:
    mode: str = "warped"
    steps: int = 25
    guidance: float = 0.1  # λ: fraction of the inconsistency removed per step (measured: docs/decisions.md)
    guidance_schedule: str = "constant"  # λ_t over the steps: constant, linear or cosine decay to 0
    # "gradient": through the denoiser (the paper's); "x0": on the prediction itself, no backward pass
    guidance_method: str = "x0"
    consistency: str = "project"
    dps_scale: float = 1.0
    # 1: from pure noise; s < 1: from the baseline noised to timestep s·T (SDEdit). 0.4: the
    # shipped prior beats harmonic fill from there, and not from pure noise (docs/benchmarks.md#sampler-modes).
    strength: float = 0.4
    batch_size: int = 8  # frames per denoiser call
    length_scale: float = 0.64  # GP ε in u-space pixels (paper: 0.64 px on a 128² latent)
    num_features: int = 3000
    # Self-guidance's flows re-estimated on the sampler's own prediction x̂0 (sharper than
    # the baseline the first estimate had) after this fraction of the steps; 0: never.
    reestimate_flow_at: float = 0.0
    # In the modes that follow the flow: unobserved pixels that the flows trace to an
    # observed pixel of another frame are copied from there and sampled as observed
    # (`Operator.propagated`; inpainting). `independent` and `fixed` stay per frame.
    propagate: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: unknown sampling mode {self.mode!r}; choose one of {MODES}")
        if self.guidance_schedule not in SCHEDULES:
            raise ValueError(f"guidance_schedule: choose one of {SCHEDULES}, got {self.guidance_schedule!r}")
        if self.guidance_method not in GUIDANCE_METHODS:
            raise ValueError(f"guidance_method: choose one of {GUIDANCE_METHODS}, got {self.guidance_method!r}")
        if self.consistency not in CONSISTENCY:
            raise ValueError(f"consistency: choose one of {CONSISTENCY}, got {self.consistency!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength: must lie in (0, 1], got {self.strength}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance: λ must be finite and >= 0, got {self.guidance}")
        if not 0 <= self.reestimate_flow_at < 1:
            raise ValueError(f"reestimate_flow_at: a fraction of the steps in [0, 1), got {self.reestimate_flow_at}")


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

    Independent white noise is a function of (seed, global frame index), so clips sharing a
    frame draw the same noise for it; warped noise (GP or white) is a function of (seed,
    the frame's GP coordinates).
    """
    t, c, h, w = shape
    if config.mode == "independent":
        return torch.stack([rnoise.white_noise(int(seed) * 1_000_003 + int(i), (c, h, w)) for i in frame_index])
    if config.mode == "fixed":
        return rnoise.white_noise(int(seed), (c, h, w)).expand(t, c, h, w).clone()
    if NOISE_OF_MODE[config.mode] == "white":
        return rnoise.white_noise_at(int(seed), c, coords)
    features = rnoise.gp_features(int(seed), c, num_features=config.num_features, length_scale=config.length_scale)
    return torch.cat([rnoise.gp_noise(features, coords[i : i + 1]) for i in range(t)])


def chain_coords(backward_flows: torch.Tensor, height: int, width: int, start: torch.Tensor | None = None,
                 first_index: int = 0) -> torch.Tensor:
    """GP coordinates of every frame (T, 2, h, w) from T−1 backward flows f_{t→t−1}.

    Frame 0 takes `start` (its coordinates in the video's chain, default the identity grid).
    After a pair without flow (NaN, `raywarp.flow.linked`) the chain restarts, as at a cut:
    frame t takes `noise.restart_coords` for its index `first_index + t` in the shot.
    """
    coords = [start if start is not None else rnoise.pixel_grid(height, width)]
    for t, f in enumerate(backward_flows, start=1):
        if bool(torch.isfinite(f).all()):
            coords.append(rnoise.warp_coords(coords[-1], f[None]))
        else:
            coords.append(rnoise.restart_coords(height, width, first_index + t).to(coords[-1]))
    return torch.cat(coords)


class ClipFlows:
    """Per-clip tensors the step loop needs, prepared once (u-space flows and masks).
    A pair without flow (`raywarp.flow.linked`) gets empty masks: no guidance across it."""

    def __init__(self, flows_fwd, flows_bwd, device):
        linked = (rflow.linked(flows_fwd) & rflow.linked(flows_bwd)).to(device).view(-1, 1, 1, 1)
        self.fwd = flows_fwd.to(device).nan_to_num()
        self.bwd = flows_bwd.to(device).nan_to_num()
        # Pixels of frame j−1 whose match in frame j is reliable, and vice versa.
        self.mask_prev = rflow.consistency_mask(self.fwd, self.bwd) * linked
        self.mask_next = rflow.consistency_mask(self.bwd, self.fwd) * linked


def self_guidance_energy(x0, prev, nxt, first: int, clip: ClipFlows) -> torch.Tensor:
    """e_j for a batch of consecutive frames j = first … first+B−1, (B,): masked warp
    differences to both neighbours, whose predictions prev / nxt (B, C, h, w: frames j−1
    and j+1, any value where there is none) are held fixed.

    Warps are bicubic: a bilinear warp low-passes sub-pixel shifts, so matching it to a
    sharp neighbour drives frame j's high frequencies up (measured: SR ×4 under zoom
    lost 5 dB with bilinear, none with bicubic; docs/decisions.md).
    """
    b, t_total = x0.shape[0], clip.fwd.shape[0] + 1
    # Made on the device: an index copied from the host waits for the device's queue to drain.
    j = torch.arange(first, first + b, device=x0.device)
    # Frame j's predecessor warp is fwd[j−1] (f_{j−1→j}), its successor warp bwd[j] (f_{j+1→j});
    # the first and last frames of the clip have only one neighbour (weight 0 on the other).
    has_prev = (j > 0).view(-1, 1, 1, 1).to(x0)
    has_next = (j < t_total - 1).view(-1, 1, 1, 1).to(x0)
    into_prev = (j - 1).clamp(0, t_total - 2)
    into_next = j.clamp(0, t_total - 2)
    d_prev = rflow.warp(x0, clip.fwd[into_prev], mode="bicubic") - prev
    d_next = rflow.warp(x0, clip.bwd[into_next], mode="bicubic") - nxt
    e = has_prev * clip.mask_prev[into_prev] * d_prev.square() + has_next * clip.mask_next[into_next] * d_next.square()
    return e.flatten(1).sum(1)


def x0_guidance_step(x0, prev, nxt, first: int, clip: ClipFlows) -> torch.Tensor:
    """Backprop-free self-guidance: the Gauss–Newton step (B, C, h, w) on the predictions
    x0 themselves, as if the denoiser's Jacobian were the identity; the gradient goes
    through the warps only, so it costs no backward pass through the network."""
    x = x0.detach().requires_grad_(True)
    with torch.enable_grad():
        return gauss_newton_step(self_guidance_energy(x, prev, nxt, first, clip), x)


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
    fwd = as_batch(flows_fwd, "flows_fwd", channels=2, allow_nan=True) if t > 1 else torch.zeros(0, 2, 1, 1)
    bwd = as_batch(flows_bwd, "flows_bwd", channels=2, allow_nan=True) if t > 1 else torch.zeros(0, 2, 1, 1)
    for name, f in (("flows_fwd", fwd), ("flows_bwd", bwd)):
        if t > 1 and f.shape[0] != t - 1:
            raise ValueError(f"{name}: need {t - 1} flows for {t} frames, got {f.shape[0]}")
        nans = torch.isnan(f).flatten(1)
        if bool((nans.any(1) & ~nans.all(1)).any()):
            raise ValueError(f"{name}: NaN in part of a pair; a pair without flow is NaN over the whole pair")
    return y, fwd, bwd


@dataclass
class Batch:
    """Frames [a, b) of a clip as one denoiser call: their operator (per-frame masks follow
    their frames) and conditioning; `lookahead`, the same for frame b alone (the successor
    self-guidance needs), where the clip goes on after b."""

    a: int
    b: int
    op: object
    cond: object
    lookahead: tuple | None = None


@dataclass
class Clip:
    """A clip made ready to sample by `prepare`: what the steps read, built once, and the
    state they advance.

    y (T, …) the measurement on the device (propagated along the flow where the mode
    follows it); info: what the network is conditioned on; batches; flows: self-guidance's
    flows and masks (None for one frame); timesteps and lambdas (λ per step); anchors:
    {frame: x̂0} of the known frames; known: {frame: image} of the same; u (T, C, h, w):
    the sampler's state; x0: the last step's predictions.
    """

    operator: object
    y: torch.Tensor
    info: dict
    batches: list[Batch]
    flows: ClipFlows | None
    timesteps: torch.Tensor
    lambdas: list[float]
    anchors: dict
    known: dict
    u: torch.Tensor
    x0: torch.Tensor | None = None


# reestimate(images (T, 3, H, W) in [0, 1], observed (T, 1, H, W), size=(h, w), detail=d) -> (fwd, bwd);
# `raywarp.flow.restoration_flows` with the run's methods.
Reestimate = Callable[..., tuple]


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
    callback: Callable[[dict], None] | None = None,
    reestimate: Reestimate = rflow.restoration_flows,
    baseline: torch.Tensor | None = None,
) -> ClipResult:
    """Restore a clip: `prepare`, one `step` per timestep, `finish`.

    observations: (T, …) measurements y of the T frames (LR frames for SR, masked frames
    for inpainting), as `operator` defines them. flows_fwd / flows_bwd: (T−1, 2, h, w)
    flows t→t+1 and t+1→t on the model's grid (output size / scale_factor), already dense
    (see `raywarp.flow.restoration_flows`). seed: per video. frame_index: (T,) global
    frame numbers (default 0..T−1). noise_coords: (T, 2, h, w) GP coordinates in the
    video's chain (default: chained from the identity at frame 0). start_anchor /
    end_anchor: (3, H, W) known images of frames 0 / T−1 (restored by a neighbouring unit).
    callback: called after every step with {"i", "t", "u", "x0"} (a trajectory).
    reestimate: how self-guidance's flows are estimated again on the prediction
    (`config.reestimate_flow_at`), called as reestimate(images, observed, size=, detail=).
    baseline: `operator.baseline(observations)` if the caller has it already.
    """
    clip = prepare(denoiser, operator, observations, flows_fwd, flows_bwd, seed, config, frame_index, noise_coords,
                   start_anchor, end_anchor, device, baseline)
    redo_at = math.ceil(config.reestimate_flow_at * len(clip.timesteps)) - 1 if config.reestimate_flow_at else -1
    with unchecked():  # inputs were checked in prepare; every value below is the loop's own
        for i in range(len(clip.timesteps)):
            step(denoiser, clip, i, config)
            if callback is not None:
                callback({"i": i, "t": int(clip.timesteps[i]), "u": clip.u, "x0": clip.x0})
            if i == redo_at and clip.flows is not None and any(clip.lambdas[i + 1 :]):
                clip.flows = reestimated_flows(denoiser, clip, reestimate, device)
    return finish(denoiser, clip)


def sample_crop(box, denoiser, operator, observations, flows_fwd, flows_bwd, seed: int,
                config: SamplerConfig = SamplerConfig(), noise_coords: torch.Tensor | None = None,
                start_anchor: torch.Tensor | None = None, end_anchor: torch.Tensor | None = None,
                baseline: torch.Tensor | None = None, **kwargs) -> ClipResult:
    """Inpainting in a crop ("only masked"): `sample_clip` on the crop `box` (a
    `raywarp.tiles.Box` in output pixels holding every hole, `raywarp.tiles.hole_box`)
    of the clip, pasted into the observed frames, which are the output outside it.

    The crop's noise is the frame's own there (its coordinates cropped from the chain of
    the whole frame), so it is what sampling the whole frame would draw. Arguments as
    `sample_clip` (whole frames; kwargs: frame_index, device, callback, reestimate).
    """
    if getattr(operator, "name", None) != "inpaint":
        raise ValueError(f"operator: sampling in a crop is for inpainting, got {type(operator).__name__}")
    y, fwd, bwd = check_clip(observations, flows_fwd, flows_bwd)
    s = denoiser.scale_factor
    if box.top % s or box.left % s or box.height % s or box.width % s:
        raise ValueError(f"box: {box} must lie on the model's grid (multiples of {s} px)")
    grid_box = type(box)(box.top // s, box.left // s, box.height // s, box.width // s)
    if config.mode in NOISE_OF_MODE and noise_coords is None:
        frame_index = kwargs.get("frame_index")
        first = 0 if frame_index is None else int(torch.as_tensor(frame_index)[0])
        noise_coords = chain_coords(bwd.double(), y.shape[-2] // s, y.shape[-1] // s, first_index=first)

    def crop(x):
        return None if x is None else box.crop(x)

    result = sample_clip(denoiser, type(operator)(box.crop(operator.mask)), box.crop(y), grid_box.crop(fwd),
                         grid_box.crop(bwd), seed, config, noise_coords=None if noise_coords is None else
                         grid_box.crop(noise_coords), start_anchor=crop(start_anchor), end_anchor=crop(end_anchor),
                         baseline=crop(baseline), **kwargs)
    frames = y.to(result.frames.device, copy=True)
    box.crop(frames).copy_(result.frames)
    return ClipResult(frames)


def prepare(denoiser, operator, observations, flows_fwd, flows_bwd, seed: int, config: SamplerConfig,
            frame_index=None, noise_coords=None, start_anchor=None, end_anchor=None, device="cpu",
            baseline=None) -> Clip:
    """Check the inputs and build everything the steps read: the measurement (propagated
    where the mode follows the flow), conditioning per batch, self-guidance's flows, the
    anchors' x̂0 and the initial state u (noise, or the noised baseline at strength < 1).
    baseline: the measurement's classical restoration, if the caller has it (propagation,
    which changes the measurement, makes its own)."""
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
    if config.mode in NOISE_OF_MODE and noise_coords is None:
        noise_coords = chain_coords(bwd.double(), h, w, first_index=int(frame_index[0]))

    if config.propagate and config.mode in NOISE_OF_MODE and t > 1:  # what another frame saw is copied, not generated
        size = (height, width)
        propagated, y = operator.propagated(y, rflow.resize_flow(fwd, size), rflow.resize_flow(bwd, size), anchors=known)
        baseline = None if propagated is not operator else baseline
        operator = propagated
    y = y.to(device)
    baseline = operator.baseline(y) if baseline is None else baseline.to(device)
    info = {"task": operator.name, "scale": getattr(operator, "scale", 1), "y": y, "baseline": baseline,
            "mask": operator.known(y)}
    spans = [(i, min(i + config.batch_size, t)) for i in range(0, t, config.batch_size)]
    coords = noise_coords.to(device) if noise_coords is not None else None  # warped noise is evaluated on the device
    u = initial_noise(config, (t, c, h, w), seed, frame_index, coords).to(device)
    if config.strength < 1:  # refine the classical restoration instead of starting from noise
        a0 = float(denoiser.alphas_cumprod[timesteps[0]])
        start = torch.cat([denoiser.encode(baseline[a:b]) for a, b in spans])
        u = math.sqrt(a0) * start + math.sqrt(1 - a0) * u
    lambdas = (guidance_weights(config) if config.mode in GUIDED and t > 1 else [0.0] * config.steps)[: len(timesteps)]

    def setup(a, b):
        sliced = {k: (v[a:b] if torch.is_tensor(v) else v) for k, v in info.items()}
        return operator.select(a, b), denoiser.condition(y[a:b], sliced)

    guided = any(lambdas)
    batches = [Batch(a, b, *setup(a, b), lookahead=setup(b, b + 1) if guided and b < t else None) for a, b in spans]
    return Clip(operator, y, info, batches, ClipFlows(fwd, bwd, device) if t > 1 else None, timesteps, lambdas,
                anchors, known, u)


def with_anchors(x0: torch.Tensor, a: int, anchors: dict) -> torch.Tensor:
    """x̂0 of frames [a, a + B) with each anchored frame's prediction replaced by its anchor
    (the hook through which a clip is held to the seams a neighbouring unit restored)."""
    for j, image in anchors.items():
        if a <= j < a + x0.shape[0]:
            x0 = torch.cat([x0[: j - a], image.to(x0), x0[j - a + 1 :]])
    return x0


def _predict(denoiser, clip: Clip, u_b: torch.Tensor, t: int, a: int, op, cond, project: bool) -> torch.Tensor:
    """x̂0 of frames [a, a + B): the network's, clipped to images (pixel models), projected
    onto the measurement (`project`), anchored."""
    x0 = denoiser.predict_x0(u_b, t, cond)
    if denoiser.space == "pixel":  # DDIM's clip_sample: images live in [-1, 1]
        x0 = x0.clamp(-1, 1)
    if project:
        x0 = denoiser.encode(op.project(denoiser.decode(x0), clip.y[a : a + u_b.shape[0]]))
    return with_anchors(x0, a, clip.anchors)


def step(denoiser, clip: Clip, i: int, config: SamplerConfig) -> None:
    """DDIM step i (η = 0) over every batch (Algorithm 1 of Warped Diffusion, both
    neighbours): predict x̂0; move against self-guidance's energy (through the network, or
    on x̂0 itself) and the measurement residual (DPS); step u to the next timestep."""
    abar, timesteps = denoiser.alphas_cumprod, clip.timesteps
    t = int(timesteps[i])
    a_t = float(abar[t])
    a_prev = float(abar[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
    lam = clip.lambdas[i]
    project = config.consistency == "project" and denoiser.space == "pixel"
    dps = config.consistency == "dps"
    through_network = config.guidance_method == "gradient"
    grad_u = (lam > 0 and through_network) or dps
    new_u, x0_step = torch.empty_like(clip.u), torch.empty_like(clip.u)
    predicted = None  # the previous batch's predictions at this step
    for batch in clip.batches:
        a, b = batch.a, batch.b
        u_b = clip.u[a:b].detach().requires_grad_(grad_u)
        with torch.set_grad_enabled(grad_u):
            x0 = _predict(denoiser, clip, u_b, t, a, batch.op, batch.cond, project)
            step_u = torch.zeros_like(u_b)
            if lam > 0:
                # Neighbours from this batch's own pass (held fixed), the previous
                # batch's, and one lookahead frame: every frame is predicted once.
                held = x0.detach()
                prev = torch.cat([predicted[-1:] if a > 0 else held[:1], held[:-1]])
                if batch.lookahead is not None:
                    with torch.no_grad():
                        after = _predict(denoiser, clip, clip.u[b : b + 1], t, b, *batch.lookahead, project)
                else:
                    after = held[-1:]  # the clip's last frame has no successor (weight 0)
                nxt = torch.cat([held[1:], after])
                if through_network:
                    e = self_guidance_energy(x0, prev, nxt, a, clip.flows)
                    if e.requires_grad:  # not when every frame of the batch is anchored
                        step_u = step_u + lam * gauss_newton_step(e, u_b, retain=dps)
                predicted = held
            if dps:
                resid = batch.op.forward(denoiser.decode(x0)) - clip.y[a:b]
                step_u = step_u + config.dps_scale * torch.autograd.grad(resid.square().sum().sqrt(), u_b)[0]
        x0 = x0.detach()
        eps = (u_b.detach() - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        if lam > 0 and not through_network:  # move the prediction itself, no backward pass
            x0 = x0 - lam * x0_guidance_step(x0, prev, nxt, a, clip.flows)
            if project:
                x0 = denoiser.encode(batch.op.project(denoiser.decode(x0), clip.y[a:b]))
            x0 = with_anchors(x0, a, clip.anchors)
        new_u[a:b] = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps - step_u
        x0_step[a:b] = x0
    clip.u, clip.x0 = new_u, x0_step


def finish(denoiser, clip: Clip) -> ClipResult:
    """The last predictions decoded, made consistent with the measurement; known frames as given."""
    with torch.no_grad():
        images = torch.cat([denoiser.decode(clip.x0[batch.a : batch.b]) for batch in clip.batches])
        images = consistent_images(clip.operator, images, clip.y)
    for j, a in clip.known.items():  # known frames are output as given
        images[j] = a.to(images)
    return ClipResult(images.cpu())


def reestimated_flows(denoiser, clip: Clip, reestimate: Reestimate, device) -> ClipFlows:
    """Self-guidance's flows estimated again (`reestimate`) on the prediction x̂0, decoded:
    sharper frames than the baseline, so motion is found more exactly; the measured pixels
    mark where motion can be trusted (in a hole it is densified); the detail is the
    measurement's (see `raywarp.flow.estimate`)."""
    with torch.no_grad():
        images = torch.cat([denoiser.decode(clip.x0[batch.a : batch.b]) for batch in clip.batches]).clamp(0, 1)
    fwd, bwd = reestimate(images.cpu(), clip.info["mask"].cpu(), size=tuple(clip.u.shape[-2:]),
                          detail=clip.info["scale"])
    return ClipFlows(fwd, bwd, device)


def consistent_images(operator, images: torch.Tensor, y: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Nearest images that agree with the measurements and lie in [0, 1].

    Alternating projections (POCS) onto the measurement-consistent affine set and the
    box [0, 1]: both convex, so the iterates approach their intersection; one projection
    followed by a clamp would undo consistency wherever the clamp bites.
    """
    with unchecked():  # the caller's inputs; a finite check per iteration would wait on the device each time
        for _ in range(iterations):
            images = operator.project(images, y).clamp(0, 1)
    return images
