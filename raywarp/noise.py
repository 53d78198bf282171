"""Temporally consistent diffusion noise: GP noise warped by flows, and warped white noise.

This module owns the initial noise of a video sampler, nothing else:

* Gaussian-process noise (Warped Diffusion, arXiv 2410.16152). A GP sample with
  squared-exponential kernel k(d) = exp(-|d|^2 / (2 eps^2)) is drawn once as J random
  Fourier features, xi(x) = sqrt(2/J) sum_j w_j cos(<z_j, x> + b_j). Because xi is a
  function of continuous coordinates, "warping" the noise of a frame is exact: the next
  frame's noise is the same function evaluated at coordinates carried along the flow
  (`warp_coords`), never an interpolation of noise values.
* White noise at the same coordinates (`white_noise_at`) for models that were not
  fine-tuned on GP noise: a seeded white-noise plane integrated over each pixel's
  footprint, in the manner of integral noise warping ("How I Warped Your Noise") /
  Go-with-the-Flow, so every pixel is exactly N(0, 1).

Units: coordinates, flows and `length_scale` are in PIXELS of the grid the noise is
evaluated on; pixel (row i, column j) has coordinate (x, y) = (j, i). Flows are
(B, 2, H, W), channel 0 = x, channel 1 = y, and are BACKWARD flows f_{t->t-1}: pixel p of
frame t shows the point p + f(p) of frame t-1.

Determinism: all randomness comes from a CPU torch.Generator and is moved to the
target device afterwards, so a seed gives identical results on every device.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raywarp.flow import warp
from raywarp.tensors import as_batch, check_same_size, to_like

__all__ = [
    "GPFeatures",
    "gp_features",
    "pixel_grid",
    "gp_noise",
    "warp_coords",
    "neighbour_spacing",
    "white_noise",
    "white_noise_at",
    "restart_coords",
]

# Elements (pixels x channels x features) of one phase block in gp_noise: 2**22 float64
# values = 32 MiB, so memory stays bounded whatever the resolution or J.
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- helpers


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


def _check_positive(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {type(value).__name__}") from None
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{name}: must be > 0, got {value}")
    return value


# ------------------------------------------------------------------- GP noise (RFF)


@dataclass(frozen=True)
class GPFeatures:
    """Random Fourier features of one GP sample per channel (float64, CPU).

    z: (C, J, 2) frequencies in radians per pixel, (x, y) order.
    b: (C, J) phases in [0, 2 pi).
    w: (C, J) N(0, 1) weights.
    length_scale, max_frequency: what the features were drawn with (for the record).
    """

    z: torch.Tensor
    b: torch.Tensor
    w: torch.Tensor
    length_scale: float
    max_frequency: float

    @property
    def channels(self) -> int:
        return self.z.shape[0]

    @property
    def num_features(self) -> int:
        return self.z.shape[1]


def gp_features(
    seed: int,
    channels: int,
    num_features: int = 3000,
    length_scale: float = 0.64,
    max_frequency: float | None = None,
) -> GPFeatures:
    """Draw the random Fourier features of a squared-exponential GP, independent per channel.

    z_j ~ N(0, eps^-2 I) truncated to |z_j| <= max_frequency, b_j ~ U(0, 2 pi), w_j ~ N(0, 1).

    max_frequency (radians per pixel): None means min(2 / eps, pi). pi is the Nyquist
    frequency of a unit pixel grid: higher frequencies alias when the noise is sampled at
    pixels. 2 / eps is the paper's rule; with its eps = 0.004977 on [0, 1]^2 for a 128-pixel
    latent (eps = 0.637 px) the two coincide (2 / eps = 3.140). Truncation does not
    change the marginal variance (always 1) but does slightly change the covariance: at
    |z| <= 2 / eps it drops exp(-2) = 13.5% of the spectral mass. Pass float("inf") for the
    untruncated, exact squared-exponential kernel.

    Truncation is sampled exactly by inverting the CDF of the radius (a Rayleigh law cut at
    max_frequency) with a uniform angle; the same law as resampling any |z_j| too large,
    but a single fixed number of draws, so the result depends on the seed alone.
    """
    seed = _check_int(seed, "seed", minimum=0)
    channels = _check_int(channels, "channels", minimum=1)
    num_features = _check_int(num_features, "num_features", minimum=1)
    length_scale = _check_positive(length_scale, "length_scale")
    if max_frequency is None:
        max_frequency = min(2.0 / length_scale, math.pi)
    max_frequency = _check_positive(max_frequency, "max_frequency")

    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (channels, num_features)
    f64 = torch.float64
    u_radius = torch.rand(shape, generator=g, dtype=f64)
    angle = torch.rand(shape, generator=g, dtype=f64) * (2.0 * math.pi)
    b = torch.rand(shape, generator=g, dtype=f64) * (2.0 * math.pi)
    w = torch.randn(shape, generator=g, dtype=f64)

    # |z| for z ~ N(0, s^2 I) in 2-D is Rayleigh: P(|z| <= r) = 1 - exp(-r^2 / (2 s^2)).
    # Inverse CDF restricted to [0, max_frequency]; expm1/log1p keep it exact for small mass.
    sigma = 1.0 / length_scale
    mass = -math.expm1(-0.5 * (max_frequency / sigma) ** 2)  # P(|z| <= max_frequency)
    radius = sigma * torch.sqrt(-2.0 * torch.log1p(-u_radius * mass))
    z = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)
    return GPFeatures(z=z, b=b, w=w, length_scale=length_scale, max_frequency=max_frequency)


def pixel_grid(
    height: int,
    width: int,
    batch: int = 1,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Identity coordinates (batch, 2, height, width): channel 0 = x = column, 1 = y = row.

    float64 by default: coordinates are chained over many frames, and float32 loses
    sub-pixel precision at large values.
    """
    height = _check_int(height, "height", minimum=1)
    width = _check_int(width, "width", minimum=1)
    batch = _check_int(batch, "batch", minimum=1)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack((xs, ys)).unsqueeze(0).expand(batch, 2, height, width).contiguous()


# How far apart (px, along x) the chains restarted at consecutive frames start: far beyond
# any GP length scale and any frame, so each restart draws fresh noise from the same plane.
RESTART_STRIDE = 2**16


def restart_coords(height: int, width: int, index: int) -> torch.Tensor:
    """(1, 2, height, width) float64: the coordinates a chain restarts on at frame `index`
    of its shot (after a pair without flow): the pixel grid moved `index` × RESTART_STRIDE
    px, so the noise there is a fresh draw, as after a cut, and the same in every unit."""
    grid = pixel_grid(height, width)
    grid[:, 0] += float(_check_int(index, "index", minimum=0) * RESTART_STRIDE)
    return grid


def gp_noise(features: GPFeatures, coords):
    """Evaluate the GP sample `features` at coordinates (B, 2, H, W) -> (B, C, H, W) float32.

    Every batch item is the same GP sample (same features) at its own coordinates.
    Phases are computed in float64 (cos of a large phase needs the digits), in chunks of
    pixels so the (pixels x J) phase block stays bounded. Accepts numpy coords (returns
    numpy).
    """
    if not isinstance(features, GPFeatures):
        raise ValueError(f"features: expected GPFeatures, got {type(features).__name__}")
    like = coords
    coords = as_batch(coords, "coords", channels=2)
    bsz, _, h, w = coords.shape
    device = coords.device
    z = features.z.to(device=device, dtype=torch.float64).transpose(1, 2)  # (C, 2, J)
    b = features.b.to(device=device, dtype=torch.float64).unsqueeze(1)  # (C, 1, J)
    wt = features.w.to(device=device, dtype=torch.float64).unsqueeze(-1)  # (C, J, 1)
    c, _, j = z.shape

    pts = coords.to(torch.float64).permute(0, 2, 3, 1).reshape(-1, 2)  # (P, 2)
    out = torch.empty(c, pts.shape[0], dtype=torch.float64, device=device)
    step = max(1, _CHUNK_ELEMENTS // (c * j))
    for start in range(0, pts.shape[0], step):
        phase = torch.matmul(pts[start:start + step], z)  # (C, p, J)
        phase.add_(b).cos_()
        out[:, start:start + step] = torch.bmm(phase, wt).squeeze(-1)
    out.mul_(math.sqrt(2.0 / j))
    out = out.view(c, bsz, h, w).transpose(0, 1).to(torch.float32)
    return to_like(out, like)


def warp_coords(coords, flow):
    """Carry coordinates one frame along a backward flow: coords_t(p) = coords_{t-1}(p + f(p)).

    coords: (B, 2, H, W) GP coordinates of frame t-1 (the identity grid for frame 0).
    flow:   (B, 2, H, W) backward flow f_{t->t-1} in pixels.
    Returns (B, 2, H, W) in float64.

    Sampling coords_{t-1} directly would clamp at the border (wrong: a point outside the
    frame has coordinates outside the grid). Instead only the displacement
    D = coords_{t-1} - grid is sampled (border-padded) and the sample point is added back:
    coords_t = grid + f + warp(D, f). This is exact everywhere for chains of translations
    (D constant) and inside the frame for any affine chain (D linear, bilinear is exact).
    """
    like = coords
    coords = as_batch(coords, "coords", channels=2).to(torch.float64)
    flow = as_batch(flow, "flow", channels=2).to(device=coords.device, dtype=torch.float64)
    check_same_size(coords=coords, flow=flow)
    _, _, h, w = coords.shape
    grid = pixel_grid(h, w, dtype=torch.float64, device=coords.device)
    out = grid + flow + warp(coords - grid, flow, padding_mode="border")
    return to_like(out, like)


def neighbour_spacing(coords) -> tuple[float, float]:
    """Median GP-coordinate distance between horizontal and between vertical neighbours,
    coords (2, H, W) (1.0, 1.0 on the identity grid).

    What the GP statistics of a frame's noise depend on: its neighbour correlation is the
    kernel at this distance. Chained through a zoom it shrinks (in) or grows (out) by the
    zoom factor; rotation and translation keep it. The median ignores the few pixels where
    occlusions tear the coordinates apart. A size-1 axis reports 1.0.
    """
    c = torch.as_tensor(coords, dtype=torch.float64)
    dx = (c[:, :, 1:] - c[:, :, :-1]).norm(dim=0)
    dy = (c[:, 1:, :] - c[:, :-1, :]).norm(dim=0)
    return (float(dx.median()) if dx.numel() else 1.0, float(dy.median()) if dy.numel() else 1.0)


# ------------------------------------------------------- Gaussian-preserving white noise


def white_noise(seed: int, shape, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """I.i.d. N(0, 1) noise of `shape`, deterministic from the int `seed` on every device."""
    seed = _check_int(seed, "seed", minimum=0)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape: expected a sequence of ints, got {shape!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"shape: every dimension must be >= 1, got {shape}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).to(device)


def _subpixels(noise: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Conditional upsampling of pixels (…, H, W) by k with offsets e (…, H, W, k, k) i.i.d.
    N(0, 1): sub-pixels (…, kH, kW), jointly i.i.d. N(0, 1), each pixel's k² summing to k·n."""
    k = e.shape[-1]
    sub = noise[..., None, None] / k + e - e.mean(dim=(-2, -1), keepdim=True)
    h, w = noise.shape[-2:]
    return sub.transpose(-3, -2).reshape(*noise.shape[:-2], h * k, w * k)


def _subpixel_landings(flow: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source sub-pixel indices (x, y), each (B, kH, kW) float64 holding integers, where the
    k×k sub-pixels of every target pixel land along the backward flow (B, 2, H, W).

    Sub-pixel i of pixel p has centre p + (i + 0.5)/k - 0.5, exactly the sample points of
    a half-pixel-aligned bilinear upsampling by k, which also gives the flow there.
    """
    _, _, h, w = flow.shape
    flow_up = F.interpolate(flow.to(torch.float64), size=(k * h, k * w), mode="bilinear", align_corners=False)
    cy = (torch.arange(k * h, dtype=torch.float64, device=flow.device) + 0.5) / k - 0.5
    cx = (torch.arange(k * w, dtype=torch.float64, device=flow.device) + 0.5) / k - 0.5
    ix = torch.floor((cx.view(1, 1, -1) + flow_up[:, 0] + 0.5) * k)
    iy = torch.floor((cy.view(1, -1, 1) + flow_up[:, 1] + 0.5) * k)
    return ix, iy


def _normalised_sums(hits: torch.Tensor, ids: torch.Tensor, h: int, w: int, k: int):
    """Per target pixel, the sum of its k² hit sub-pixels (B, C, kH·kW) divided by
    sqrt(sum_j m_j^2), m_j the multiplicity of each distinct source sub-pixel (ids
    (B, kH, kW)), so Var = 1 exactly. Returns (B, C, H, W) and sum_j m_j^2 (B, H, W)."""
    bsz, c = hits.shape[:2]
    total = hits.view(bsz, c, h, k, w, k).sum(dim=(3, 5))
    # sum_j m_j^2 = the number of ordered pairs of a target's sub-pixels with the same id.
    ids_px = ids.view(bsz, h, k, w, k).permute(0, 1, 3, 2, 4).reshape(bsz, h, w, k * k)
    sq = (ids_px.unsqueeze(-1) == ids_px.unsqueeze(-2)).sum(dim=(-2, -1))
    return total / torch.sqrt(sq.to(hits.dtype)).unsqueeze(1), sq


WHITE_TILE = 64  # pixels per side of one tile of `white_noise_at`'s noise plane, each drawn from its own seed


def _white_tile(seed: int, channels: int, tx: int, ty: int, k: int) -> torch.Tensor:
    """Sub-pixels (C, (S·k)²) of tile (tx, ty) of the seed's white-noise plane, row-major."""
    tile_seed = int.from_bytes(hashlib.blake2b(f"{seed}|{tx}|{ty}".encode(), digest_size=8).digest(), "little") >> 1
    g = torch.Generator(device="cpu").manual_seed(tile_seed)
    n = torch.randn((channels, WHITE_TILE, WHITE_TILE), generator=g)
    e = torch.randn((channels, WHITE_TILE, WHITE_TILE, k, k), generator=g)
    return _subpixels(n, e).reshape(channels, -1)


def white_noise_at(seed: int, channels: int, coords, subdivisions: int = 4) -> torch.Tensor:
    """White noise (B, C, H, W) float32 at GP coordinates (B, 2, H, W) (see `warp_coords`):
    the counterpart of `gp_noise` for models trained on i.i.d. noise.

    The seed fixes one white-noise plane: i.i.d. N(0, 1) pixels on the whole integer
    lattice (drawn tile by tile, `WHITE_TILE`² pixels from each tile's own seed), upsampled
    to k×k sub-pixels conditionally (`_subpixels`: pixel n → sub-pixels n/k + e_i − mean e,
    e_i i.i.d. N(0, 1), jointly i.i.d. N(0, 1) and summing to k·n). Pixel p of a frame
    integrates the plane over its footprint: its k×k sub-pixel centres, carried by the
    displacement coords − grid, pick the sub-pixels they land on, and their sum is divided
    by sqrt(Σ_j m_j²), m_j the multiplicity of each distinct sub-pixel hit
    (`_normalised_sums`), so Var = 1 exactly even where the coordinates compress or
    magnify. So every pixel is exactly N(0, 1), pixels with disjoint footprints are
    independent, the noise moves with the content along chained coordinates (the
    Gaussian-preserving warp of Go-with-the-Flow, taken from the shot's reference plane
    rather than frame to frame), and it is a function of (seed, coords) alone: a frame
    two units share gets the same noise in both, and a restarted chain (the pixel grid)
    gets the plane's own pixels back.
    """
    seed = _check_int(seed, "seed", minimum=0)
    channels = _check_int(channels, "channels", minimum=1)
    k = _check_int(subdivisions, "subdivisions", minimum=1)
    coords = as_batch(coords, "coords", channels=2).to(torch.float64)
    bsz, _, h, w = coords.shape
    ix, iy = _subpixel_landings(coords - pixel_grid(h, w, device=coords.device), k)
    side = WHITE_TILE * k  # sub-pixels per tile side
    tx, ty = torch.div(ix, side, rounding_mode="floor").long(), torch.div(iy, side, rounding_mode="floor").long()
    # Number the tiles the frame touches; a hit's id is (its tile's number, its place in the tile).
    x0, y0 = int(tx.min()), int(ty.min())
    tiles, number = torch.unique((ty - y0) * (int(tx.max()) - x0 + 1) + (tx - x0), return_inverse=True)
    span = int(tx.max()) - x0 + 1
    plane = torch.cat([_white_tile(seed, channels, int(key % span) + x0, int(key // span) + y0, k)
                       for key in tiles.tolist()], 1).to(coords.device)  # (C, tiles · side²)
    ids = number * side * side + (iy.long() - ty * side) * side + (ix.long() - tx * side)
    hits = plane[:, ids.view(-1)].view(channels, bsz, -1).transpose(0, 1)
    return _normalised_sums(hits, ids, h, w, k)[0]
