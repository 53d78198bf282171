"""One unit's work as plain functions (no Ray): measure → flow → noise coordinates → sample.

The Ray stages (`raywarp.pipeline.stages`) call these, and so does the plain
single-process loop the pipeline benchmark compares against, so both do the same work.
Frames travel as uint8 (T, H, W, 3) arrays; flows as float32 (T−1, 2, H, W) at output
resolution; anchors are the seams' payloads (see `raywarp.pipeline.plan`).

Noise coordinates are global per video, so a frame shared by two units gets the same GP
noise in both: each unit reports its *end map* (where its last frame's pixels sit in its
first frame, through its own flows), and `start_coords` scans these maps along the
video (one cheap composition per unit) to give every unit the coordinates of its first
frame. Each unit then chains on from there with its own flows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from raywarp import flow as rflow
from raywarp import inverse
from raywarp import noise as rnoise
from raywarp.pipeline.config import RunConfig
from raywarp.sampler import chain_coords, sample_clip, to_u_grid


@dataclass
class Measurement:
    """What the restoration starts from: operator, measurements y (T,3,h,w) and output size."""

    op: object
    y: torch.Tensor
    size: tuple[int, int]


def measure(frames: np.ndarray, config: RunConfig, start: int, video_frames: int) -> Measurement:
    """The measurement of frames [start, start + T) of a video of `video_frames` frames.

    SR: the frames are the low-resolution input. Inpainting: the hole mask is built at the
    frame size for the whole video (moving shapes and per-frame mask files depend on the
    frame number) and cut to this span; the pixels in the hole are ignored.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames: expected (T, H, W, 3) uint8 with T >= 1, got {frames.shape}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255
    mask = None
    if config.task == "inpaint":
        full = inverse.parse_mask(config.mask, x.shape[-2:], video_frames)
        mask = full[start : start + x.shape[0]].contiguous()
    op = inverse.make_operator(config.task, scale=config.scale, kernel=config.kernel, mask=mask)
    y = op.forward(x) if config.task == "inpaint" else x
    return Measurement(op, y, op.output_size(y))


def flows(m: Measurement, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """Dense flows (T−1, 2, H, W) both ways at output size, estimated on the baseline."""
    if m.y.shape[0] < 2:
        empty = np.zeros((0, 2, *m.size), np.float32)
        return empty, empty
    fwd, bwd = rflow.restoration_flows(m.op.baseline(m.y), m.op.known(m.y), config.flow_method, config.densify_method)
    return fwd.numpy(), bwd.numpy()


def video_seed(config: RunConfig, vid: str) -> int:
    """Per-video seed: every actor derives the same noise for a video's frames."""
    return int.from_bytes(hashlib.sha256(f"{config.seed}|{vid}".encode()).digest()[:4], "little") >> 1


def _padded(m: Measurement, fwd: np.ndarray, bwd: np.ndarray, multiple: int):
    """The measurement and flows padded to the model's multiple (flows by edge replication)."""
    op, y, size = inverse.pad_measurement(m.op, m.y, multiple)
    if fwd.shape[0] == 0:  # a one-frame unit has no flows
        empty = torch.zeros(0, 2, *op.output_size(y))
        return op, y, size, empty, empty
    fwd_t, bwd_t = (inverse.pad_to_multiple(torch.from_numpy(f), multiple, "replicate")[0] for f in (fwd, bwd))
    return op, y, size, fwd_t, bwd_t


def _u_size(y: torch.Tensor, op, scale_factor: int) -> tuple[int, int]:
    up = getattr(op, "scale", 1)
    return y.shape[-2] * up // scale_factor, y.shape[-1] * up // scale_factor


def end_map(m: Measurement, fwd: np.ndarray, bwd: np.ndarray, geometry: tuple[int, int]) -> np.ndarray:
    """(2, h, w) float64: u-space position in the unit's first frame of each pixel of its last.

    geometry: the model's (scale_factor, multiple) (`raywarp.models.geometry`).
    """
    s, multiple = geometry
    op, y, _, _, bwd_t = _padded(m, fwd, bwd, s * multiple)
    h, w = _u_size(y, op, s)
    return chain_coords(to_u_grid(bwd_t, s).double(), h, w)[-1].numpy()


def start_coords(end_maps: list[np.ndarray]) -> list[np.ndarray]:
    """GP coordinates (2, h, w) of the first frame of each unit of a video, in time order
    (each unit's first frame being the previous unit's last): the first unit starts at
    the identity grid, and each next one where the previous end map carries it."""
    h, w = end_maps[0].shape[-2:]
    grid = rnoise.pixel_grid(h, w)
    coords = [grid]
    for e in end_maps[:-1]:
        coords.append(rnoise.warp_coords(coords[-1], torch.from_numpy(e)[None] - grid))
    return [c[0].numpy() for c in coords]


@dataclass
class Restored:
    frames: np.ndarray  # (T, H, W, 3) uint8
    start_trajectory: np.ndarray  # (steps, C, h, w) x̂0 of the first frame at every step
    end_trajectory: np.ndarray


def restore(denoiser, m: Measurement, fwd: np.ndarray, bwd: np.ndarray, config: RunConfig, seed: int, start: int,
            first_coords: np.ndarray | None = None, start_anchor: dict | None = None, end_anchor: dict | None = None,
            device="cpu") -> Restored:
    """Sample the unit's frames; anchors are seam payloads (`Restored` fields as arrays).

    first_coords: (2, h, w) GP coordinates of the first frame (`start_coords`; default the
    identity grid). The measurement is padded to the model's multiple and the result
    cropped back, then made consistent with the unpadded measurement.
    """
    s = denoiser.scale_factor
    op, y, size, fwd_t, bwd_t = _padded(m, fwd, bwd, s * denoiser.multiple)
    coords = None
    if config.sampler.mode in ("gp-warp", "warped"):
        first = torch.from_numpy(first_coords)[None] if first_coords is not None else None
        coords = chain_coords(to_u_grid(bwd_t, s).double(), *_u_size(y, op, s), start=first)
    result = sample_clip(
        denoiser, op, y, fwd_t, bwd_t, seed=seed, config=config.sampler,
        frame_index=torch.arange(start, start + y.shape[0]), noise_coords=coords,
        start_anchor=torch.from_numpy(start_anchor["end_trajectory"]) if start_anchor else None,
        end_anchor=torch.from_numpy(end_anchor["start_trajectory"]) if end_anchor else None,
        device=device,
    )
    images = m.op.project(inverse.crop(result.frames, size), m.y).clamp(0, 1)
    frames = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return Restored(frames, result.start_trajectory.numpy(), result.end_trajectory.numpy())
