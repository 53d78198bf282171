"""One unit's work as plain functions (no Ray): measure → flows → end map → restore.

The Ray stages (`raywarp.pipeline.stages`) call these, and so does the plain
single-process loop the pipeline benchmark compares against, so both do the same work.
Frames travel as uint8 (T, H, W, 3) arrays. Flows are computed once per unit, on the
grid the model samples on (its u-space: output size / scale_factor, padded to the
model's multiple), and used there: by the sampler, for the unit's end map, for the
noise coordinates.

Noise coordinates are global per video, so a frame shared by two units gets the same GP
noise in both: each unit reports its *end map* (where its last frame's pixels sit in its
first frame, through its own flows), and `advance` carries a unit's first-frame
coordinates through it to the next unit's first frame (one cheap composition per unit).
Each unit then chains on from there with its own flows.

Over a long shot the chained coordinates drift: a long zoom compresses (or stretches)
them, and the noise of every later frame grows too smooth (or too rough). `advance`
restarts the chain on the pixel grid where a unit would start with its neighbour spacing
outside `NOISE_SPACING`; each unit then drifts at most by its own motion, so every frame's
noise keeps GP statistics near those of a fresh frame (bounds: docs/pipeline.md#long-shots).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from raywarp import flow as rflow
from raywarp import inverse
from raywarp import noise as rnoise
from raywarp import tiles
from raywarp.pipeline.config import RunConfig
from raywarp.sampler import NOISE_OF_MODE, chain_coords, sample_clip, sample_crop
from raywarp.tensors import frames_to_tensor, tensor_to_frames

NOISE_SPACING = (0.8, 1.25)  # band of `rnoise.neighbour_spacing` a unit's chain may start in


@dataclass
class Measurement:
    """What a unit's restoration starts from.

    op, y: the operator and measurements (T, 3, h, w) of the frames; size: their output
    size. padded_op, padded_y: the same padded so the output is a multiple of the model's
    multiple; grid: the model's u-space size (h, w) at that padded output size.
    `baseline()`: the classical restoration of padded_y, computed once (the flows estimate
    on it, the sampler conditions on it).
    """

    op: object
    y: torch.Tensor
    size: tuple[int, int]
    padded_op: object
    padded_y: torch.Tensor
    grid: tuple[int, int]
    _baseline: torch.Tensor | None = None

    def baseline(self) -> torch.Tensor:
        if self._baseline is None:
            self._baseline = self.padded_op.baseline(self.padded_y)
        return self._baseline


def measure(frames: np.ndarray, config: RunConfig, start: int, video_frames: int, geometry: tuple[int, int]) -> Measurement:
    """The measurement of frames [start, start + T) of a video of `video_frames` frames.

    geometry: the model's (scale_factor, multiple) (`raywarp.models.geometry`).
    SR: the frames are the low-resolution input. Inpainting: the hole mask of this span
    at the frame size (moving shapes and per-frame mask files depend on the frame
    number); the pixels in the hole are ignored.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames: expected (T, H, W, 3) uint8 with T >= 1, got {frames.shape}")
    x = frames_to_tensor(frames)
    mask = None
    if config.task == "inpaint":
        mask = inverse.parse_mask(config.mask, x.shape[-2:], video_frames, start, start + x.shape[0]).contiguous()
    op = inverse.make_operator(config.task, scale=config.scale, kernel=config.kernel, mask=mask)
    y = op.forward(x) if config.task == "inpaint" else x
    s, multiple = geometry
    padded_op, padded_y, size = inverse.pad_measurement(op, y, s * multiple)
    height, width = padded_op.output_size(padded_y)
    return Measurement(op, y, size, padded_op, padded_y, (height // s, width // s))


def _resized(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images (T, C, H, W) at `size`: area-averaged when shrinking, bilinear when growing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2]
    return F.interpolate(x, size=size, mode="area") if shrink else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def flows(m: Measurement, config: RunConfig, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Dense flows (T−1, 2, h, w) both ways on the model's grid `m.grid`, float32, on
    `device` (where densification runs; estimation is OpenCV's, on the CPU).

    config.flow_from: "baseline" estimates on the classical restoration brought to the
    grid; "input" on the measured frames themselves (for SR the low-resolution input,
    16× fewer pixels at ×4), the flows then resampled to the grid.
    """
    y, op = m.padded_y, m.padded_op
    if y.shape[0] < 2:
        empty = torch.zeros(0, 2, *m.grid, device=device)
        return empty, empty
    if config.flow_from == "input" and config.task == "sr":
        guide, observed, detail = y, torch.ones(y.shape[0], 1, *y.shape[-2:]), 1.0
    else:  # an area-averaged mask is 1 only where every pixel it covers was observed
        guide = _resized(m.baseline(), m.grid)
        observed = (_resized(op.known(y), m.grid) > 1 - 1e-6).float()
        # an SR baseline holds detail only at the input's sampling, on the grid that many pixels
        detail = max(getattr(op, "scale", 1) * m.grid[0] / op.output_size(y)[0], 1.0)
    return rflow.restoration_flows(guide.to(device), observed.to(device), m.grid, config.flow_method,
                                   config.densify_method, detail)


def end_map(bwd: torch.Tensor, grid: tuple[int, int], chain: torch.Tensor | None = None) -> np.ndarray:
    """(2, h, w) float32: the position in the unit's first frame of each pixel of its last,
    as a displacement from the pixel grid (smooth, so it compresses); NaN where a pair of
    the unit has no flow (`raywarp.flow.linked`): its last frame has no position in its first.
    chain: the unit's coordinates chained from the pixel grid (`chain_coords(bwd)`), if made."""
    if not bool(rflow.linked(bwd).all()):
        return np.full((2, *grid), np.nan, np.float32)
    last = (chain if chain is not None else chain_coords(bwd.double(), *grid))[-1]
    return (last - rnoise.pixel_grid(*grid)[0]).float().numpy()


def advance(first: np.ndarray | None, end: np.ndarray) -> np.ndarray | None:
    """GP coordinates (2, h, w) of the next unit's first frame (this unit's last), from this
    unit's first-frame coordinates (None: the identity grid, a shot's first unit) and its
    end map; None (the identity grid: the chain restarts) where their neighbour spacing
    leaves `NOISE_SPACING`, or where the end map is NaN (the chain restarted inside the unit)."""
    if np.isnan(end).any():
        return None
    first_t = rnoise.pixel_grid(*end.shape[-2:]) if first is None else torch.tensor(first)[None]
    coords = rnoise.warp_coords(first_t, torch.tensor(end, dtype=torch.float64)[None])[0]
    low, high = NOISE_SPACING
    return coords.numpy() if all(low <= d <= high for d in rnoise.neighbour_spacing(coords)) else None


def inpainting_crop(denoiser, m: Measurement) -> tiles.Box | None:
    """The crop (`raywarp.tiles.hole_box`) in which the unit's holes are restored: the
    model's native tile, or the holes and a quarter of it around them where larger."""
    native = denoiser.default_tiling()[0]
    return tiles.hole_box(m.padded_op.mask, native, native // 4, denoiser.scale_factor * denoiser.multiple)


def restore(denoiser, m: Measurement, fwd: torch.Tensor, bwd: torch.Tensor, config: RunConfig, seed: int, start: int,
            first_coords: np.ndarray | None = None, start_anchor: np.ndarray | None = None,
            end_anchor: np.ndarray | None = None, device="cpu", chain: torch.Tensor | None = None) -> np.ndarray:
    """Sample the unit's frames; returns them as (T, H, W, 3) uint8 at output size.

    fwd, bwd: `flows(m, config)`. seed: the shot's (`plan.shot_seed`); start: the first
    frame's index in its shot. first_coords: `advance`'s coordinates of the first frame
    (None: the identity grid). start_anchor / end_anchor: (H, W, 3) uint8 frames restored
    by the neighbouring seams, known frames for the first / last frame. chain: the unit's
    coordinates chained from the pixel grid (`chain_coords(bwd, first_index=start)`), if
    made already: the noise's coordinates when the first frame's are the grid. Inpainting
    with `config.inpaint_crop` samples only a crop around the holes (`inpainting_crop`);
    frames without a hole (a moving mask elsewhere) are the measurement, not sampled.
    The result is cropped from the padded size and made consistent with the unpadded
    measurement.
    """
    if config.task == "inpaint" and not bool((m.op.mask < 0.5).any()):  # no hole in these frames: nothing to sample
        return tensor_to_frames(m.y)
    s = denoiser.scale_factor
    coords = None
    if config.sampler.mode in NOISE_OF_MODE:
        if first_coords is None and chain is not None:
            coords = chain
        else:
            first = torch.tensor(first_coords)[None] if first_coords is not None else None
            coords = chain_coords(bwd.double(), *m.grid, start=first, first_index=start)

    def anchor(frame):  # padded as the output is
        return None if frame is None else inverse.pad_to_multiple(frames_to_tensor(frame[None]), s * denoiser.multiple)[0][0]

    box = inpainting_crop(denoiser, m) if config.task == "inpaint" and config.inpaint_crop else None
    sample = functools.partial(sample_crop, box) if box is not None else sample_clip
    result = sample(
        denoiser, m.padded_op, m.padded_y, fwd, bwd, seed=seed, config=config.sampler,
        frame_index=torch.arange(start, start + m.y.shape[0]), noise_coords=coords,
        start_anchor=anchor(start_anchor), end_anchor=anchor(end_anchor), device=device, baseline=m.baseline(),
        reestimate=functools.partial(rflow.restoration_flows, method=config.flow_method,
                                     densify_method=config.densify_method),
    )
    images = m.op.project(inverse.crop(result.frames, m.size), m.y).clamp(0, 1)
    return tensor_to_frames(images)
