"""Tiled denoising: a frame's x̂0 predicted tile by tile, the tiles blended with smooth weights.

This module owns the geometry of tiling and the blend, as plain functions over tensors;
`raywarp.models.Denoiser.enable_tiling` switches a model to it, so the sampler, its
guidance, anchors and measurement consistency see one blended prediction per frame, as
without tiles.

Layout: along each axis of the u-grid (length L), n = ⌈(L − O) / (T − O)⌉ tiles spread
evenly from 0 to L, each as small as lets neighbours overlap by at least O (at most T;
one tile of size L where L ≤ T): the work is ≈ (T'/(T' − O))² of the untiled for
tiles of T', not more. Every tile has the same size, so a batch of crops stacks.

Blend (MultiDiffusion's average, with the feathered weights of Mixture of Diffusers):
each tile's weight is 1 inside and rises as sin² over the O pixels at each edge that
borders another tile (at the frame's border it stays 1); the weights are divided by
their sum, so they add up to 1 at every pixel, and a tile's prediction fades out before
its own border, where it has the least context.

Holes: `hole_box` is the crop in which inpainting restores a hole much smaller than the
frame ("only masked" inpainting), at the model's native size around it.

Noise: the sampler's state u is one tensor per frame; a tile is a crop of it. So the
noise every tile sees is the frame's own, evaluated once at the frame's global
coordinates (GP or white-plane noise, `raywarp.noise`): two tiles see the same noise
where they overlap and predict nearly the same there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Box", "Layout", "axis_tiles", "layout", "blend", "hole_box"]


@dataclass(frozen=True)
class Box:
    """A tile of the u-grid: rows [top, top + height), columns [left, left + width)."""

    top: int
    left: int
    height: int
    width: int

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """x (…, H, W) -> (…, height, width)."""
        return x[..., self.top : self.top + self.height, self.left : self.left + self.width]


@dataclass(frozen=True)
class Layout:
    """The tiles of a (height, width) grid and their blend weights (K, 1, th, tw), float32,
    summing to 1 over the tiles at every pixel of the grid."""

    boxes: tuple[Box, ...]
    weights: torch.Tensor

    def edges(self, height: int, width: int) -> tuple[list[int], list[int]]:
        """(rows, columns) where a tile begins or ends inside the (height, width) grid: the
        lines along which a seam would show (a line at c lies between pixels c − 1 and c)."""
        rows = {b.top for b in self.boxes} | {b.top + b.height for b in self.boxes}
        cols = {b.left for b in self.boxes} | {b.left + b.width for b in self.boxes}
        return sorted(r for r in rows if 0 < r < height), sorted(c for c in cols if 0 < c < width)


def axis_tiles(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[list[int], int]:
    """(starts, size) of the tiles along an axis of `length`: the fewest tiles of at most
    `tile` that overlap by >= `overlap`, made as small as that allows (a multiple of
    `multiple`), so the overlap stays near `overlap` whatever the length."""
    if tile <= 0 or overlap < 0 or 2 * overlap > tile:
        raise ValueError(f"tiles: need tile > 0 and 0 <= overlap <= tile / 2, got tile {tile}, overlap {overlap}")
    if length <= tile:
        return [0], length
    n = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, math.ceil(math.ceil((length + (n - 1) * overlap) / n) / multiple) * multiple)
    return [round(i * (length - size) / (n - 1)) for i in range(n)], size


def _ramp(size: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """(size,) weights: 1, rising as sin² over the first `overlap` entries (`rise`) and
    falling over the last (`fall`); never 0, so every pixel has weight."""
    w = torch.ones(size, dtype=torch.float64)
    if overlap:
        edge = torch.sin(0.5 * math.pi * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap) ** 2
        if rise:
            w[:overlap] *= edge
        if fall:
            w[size - overlap :] *= edge.flip(0)
    return w


def layout(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> Layout:
    """Tiles of at most `tile`² overlapping by >= `overlap` (`axis_tiles`), row-major."""
    (rows, th), (cols, tw) = axis_tiles(height, tile, overlap, multiple), axis_tiles(width, tile, overlap, multiple)
    boxes, weights = [], []
    for i, top in enumerate(rows):
        wy = _ramp(th, overlap, rise=i > 0, fall=i < len(rows) - 1)
        for j, left in enumerate(cols):
            wx = _ramp(tw, overlap, rise=j > 0, fall=j < len(cols) - 1)
            boxes.append(Box(top, left, th, tw))
            weights.append(wy[:, None] * wx[None, :])
    total = torch.zeros(height, width, dtype=torch.float64)
    for box, w in zip(boxes, weights):
        box.crop(total).add_(w)
    weights = torch.stack([w / box.crop(total) for box, w in zip(boxes, weights)])[:, None]  # (K, 1, th, tw)
    return Layout(tuple(boxes), weights.float())


def blend(predict: Callable[[list[Box]], torch.Tensor], shape, tiles: Layout, per_call: int = 1) -> torch.Tensor:
    """Σ_k w_k ⊙ predict(tile k), pasted at each tile's place: (B, C, H, W).

    predict(boxes) -> (len(boxes) · B, C, th, tw): the predictions of those tiles of every
    frame, tile-major (the B frames of the first box, then of the next), so `per_call`
    tiles go through the network as one batch. shape: (B, C, H, W) of the result; the
    layout's weights on the prediction's device. Differentiable through predict.
    """
    b = shape[0]
    out = None
    for k in range(0, len(tiles.boxes), per_call):
        boxes = list(tiles.boxes[k : k + per_call])
        x = predict(boxes)
        if out is None:
            out = x.new_zeros(shape)
        for i, box in enumerate(boxes):
            region = (..., slice(box.top, box.top + box.height), slice(box.left, box.left + box.width))
            out[region] = out[region] + tiles.weights[k + i].to(x.dtype) * x[i * b : (i + 1) * b]
    return out


def hole_box(mask: torch.Tensor, native: int, margin: int, grid: int) -> Box | None:
    """The crop (output pixels) that restores every hole of a clip at the model's native
    size: the holes' bounding box over all frames, grown by `margin` on each side and to
    at least `native`, centred on the holes, inside the frame, its start and size
    multiples of `grid` (the model's pixels per grid cell: scale_factor · multiple).

    mask: (T, 1, H, W), 0 = hole, H and W multiples of `grid`. None where there is no
    hole, or where the crop would span the frame along both axes (sample it whole).
    """
    hole = mask[:, 0] < 0.5
    if not bool(hole.any()):
        return None
    spans = []
    for axis, length in ((1, mask.shape[-2]), (2, mask.shape[-1])):
        index = hole.any(dim=[d for d in (0, 1, 2) if d != axis]).nonzero().flatten()
        lo, hi = int(index[0]) - margin, int(index[-1]) + 1 + margin
        size = min(length, math.ceil(max(hi - lo, native) / grid) * grid)
        start = min(max(0, (lo + hi - size) // 2 // grid * grid), length - size)
        spans.append((start, size))
    (top, height), (left, width) = spans
    if (height, width) == tuple(mask.shape[-2:]):
        return None
    return Box(top, left, height, width)
