"""Quality metrics: flow accuracy (EPE), image fidelity (PSNR, SSIM),
temporal consistency (warping error of Lai et al. 2018) and seams along given lines.

All functions take torch tensors or numpy arrays shaped (B, C, H, W) (or
(C, H, W)); results come back as torch tensors, or as numpy when the first
argument was numpy. Images are in [0, data_range].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from raywarp import flow as _flow
from raywarp.tensors import as_batch, check_same_size

REDUCTIONS = ("mean", "none")


def _out(v: torch.Tensor, like):
    """Return a metric as numpy (0-d -> float) if `like` was numpy, else as is."""
    if isinstance(like, np.ndarray):
        v = v.detach().cpu().numpy()
        return float(v) if v.ndim == 0 else v
    return v


def _reduce(v: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown {reduction!r}, expected one of {', '.join(REDUCTIONS)}")
    return v.mean() if reduction == "mean" else v


def _pair(x, y, channels=None) -> tuple[torch.Tensor, torch.Tensor]:
    tx = as_batch(x, "x", channels=channels)
    ty = as_batch(y, "y", channels=channels)
    if tx.shape != ty.shape:
        raise ValueError(f"y: shape {tuple(ty.shape)} does not match x {tuple(tx.shape)}")
    return tx, ty.to(device=tx.device)


def _check_range(data_range: float) -> float:
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range: expected a positive finite number, got {data_range!r}")
    return float(data_range)


# --------------------------------------------------------------------------
# flow


def epe(flow, gt, mask=None):
    """Mean end-point error: Σ_p m(p) |flow(p) - gt(p)|_2 / Σ_p m(p).

    flow, gt: (B, 2, H, W) in pixels; mask: optional (B, 1, H, W), 1 = count
    the pixel (default: all pixels). Averages over every selected pixel of the
    whole batch. Returns a 0-d tensor (float if `flow` was numpy).
    """
    f = as_batch(flow, "flow", channels=2)
    g = as_batch(gt, "gt", channels=2).to(device=f.device, dtype=f.dtype)
    check_same_size(flow=f, gt=g)
    err = (f - g).pow(2).sum(1, keepdim=True).sqrt()
    if mask is None:
        return _out(err.mean(), flow)
    m = as_batch(mask, "mask", channels=1).to(device=f.device, dtype=f.dtype)
    check_same_size(flow=f, mask=m)
    total = m.sum()
    if total <= 0:
        raise ValueError("mask: selects no pixels, end-point error is undefined")
    return _out((err * m).sum() / total, flow)


# --------------------------------------------------------------------------
# images


def psnr(x, y, data_range: float = 1.0, reduction: str = "mean"):
    """Peak signal-to-noise ratio, per batch item then averaged.

    PSNR_b = 10 log10(data_range^2 / MSE_b), MSE_b the mean squared error over
    the C×H×W values of item b. x, y: (B, C, H, W). reduction="mean" returns
    the mean of the B values (0-d), "none" the (B,) values. Identical items
    give +inf.
    """
    r = _check_range(data_range)
    tx, ty = _pair(x, y)
    mse = (tx.double() - ty.double()).pow(2).flatten(1).mean(1)
    val = 10 * torch.log10(r * r / mse)
    return _out(_reduce(val.to(tx.dtype), reduction), x)


def _gaussian_window(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    # Same kernel as scipy.ndimage.gaussian_filter (used by skimage): radius
    # int(truncate * sigma + 0.5), so σ = 1.5 gives an 11-tap window.
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def ssim(x, y, data_range: float = 1.0, reduction: str = "mean"):
    """Structural similarity (Wang et al. 2004), per batch item.

    Local statistics use an 11×11 Gaussian window (σ = 1.5) with population
    (not sample) covariance:
        SSIM(p) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),
        C1 = (0.01 L)², C2 = (0.03 L)², L = data_range.
    The map is averaged over the valid region (pixels whose window lies fully
    inside the image, i.e. a 5-px border is dropped) and over channels. This
    matches skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=L, channel_axis=...).
    x, y: (B, C, H, W) with H, W >= 11. reduction="mean" returns the mean of
    the B values (0-d), "none" the (B,) values.
    """
    r = _check_range(data_range)
    tx, ty = _pair(x, y)
    _, c, h, w = tx.shape
    if h < 11 or w < 11:
        raise ValueError(f"x: SSIM needs images of at least 11x11, got {h}x{w}")
    # float64: the variances are differences of near-equal means.
    a, b = tx.double(), ty.double()
    g = _gaussian_window(1.5, 3.5, a.dtype, a.device)
    gx = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    gy = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    # Separable, depthwise, no padding: only the valid region survives.
    blur = lambda z: F.conv2d(F.conv2d(z, gx, groups=c), gy, groups=c)  # noqa: E731
    mx, my = blur(a), blur(b)
    vx = blur(a * a) - mx * mx
    vy = blur(b * b) - my * my
    cxy = blur(a * b) - mx * my
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    val = s.flatten(1).mean(1)
    return _out(_reduce(val.to(tx.dtype), reduction), x)


# --------------------------------------------------------------------------
# temporal consistency


def warping_error_per_pair(frames, flows_fwd, flows_bwd):
    """Warping error of each consecutive frame pair (Lai et al. 2018).

    frames: (T, 3, H, W) output video O in [0, 1], T >= 2.
    flows_fwd: (T-1, 2, H, W), entry t-1 the flow t-1 -> t of the INPUT video.
    flows_bwd: (T-1, 2, H, W), entry t-1 the flow t -> t-1 of the INPUT video.
    For t = 1 .. T-1, with f = flows_fwd[t-1], b = flows_bwd[t-1]:
        M   = consistency_mask(f, b) * (1 - motion_boundary(f))     (H, W)
        E_t = Σ_p M(p) · mean_c (warp(O_t, f)(p) - O_{t-1}(p))² / Σ_p M(p)
    i.e. the squared error is averaged over channels (this equals the
    released evaluation script, which loads the mask with 3 channels so its
    normaliser counts channels). The mask lives in frame t-1 coordinates and
    excludes occlusions, out-of-frame motion and motion boundaries. A pair
    whose mask is empty contributes 0, as in the reference script.
    Returns (T-1,) tensor (numpy if `frames` was numpy).
    """
    o = as_batch(frames, "frames", channels=3)
    t = o.shape[0]
    if t < 2:
        raise ValueError(f"frames: need at least 2 frames, got {t}")
    f = as_batch(flows_fwd, "flows_fwd", channels=2).to(device=o.device, dtype=o.dtype)
    b = as_batch(flows_bwd, "flows_bwd", channels=2).to(device=o.device, dtype=o.dtype)
    for name, fl in (("flows_fwd", f), ("flows_bwd", b)):
        if fl.shape[0] != t - 1 or fl.shape[-2:] != o.shape[-2:]:
            raise ValueError(
                f"{name}: expected shape ({t - 1}, 2, {o.shape[2]}, {o.shape[3]}) for {t} frames, "
                f"got {tuple(fl.shape)}"
            )
    m = _flow.consistency_mask(f, b) * (1 - _flow.motion_boundary(f))
    diff2 = (_flow.warp(o[1:], f) - o[:-1]).pow(2).mean(1, keepdim=True)
    num = (m * diff2).flatten(1).sum(1)
    den = m.flatten(1).sum(1)
    err = torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))
    return _out(err, frames)


def warping_error(frames, flows_fwd, flows_bwd):
    """Mean over t of `warping_error_per_pair` (Lai et al. 2018):
    E_warp = 1/(T-1) Σ_{t=1}^{T-1} E_t. Same arguments; returns a 0-d tensor
    (float if `frames` was numpy).
    """
    per = warping_error_per_pair(frames, flows_fwd, flows_bwd)
    if isinstance(per, np.ndarray):
        return float(per.mean())
    return per.mean()


def boundary_gradient(frames, rows, cols) -> float:
    """Mean absolute step across the given lines of frames (T, C, H, W): across row line r
    between rows r − 1 and r, across column line c between columns c − 1 and c; the
    figure a seam along those lines raises (compare it with the same lines of an output
    without the seams)."""
    x = as_batch(frames, "frames")
    steps = [(x[..., r, :] - x[..., r - 1, :]).abs().mean() for r in rows]
    steps += [(x[..., c] - x[..., c - 1]).abs().mean() for c in cols]
    if not steps:
        raise ValueError("rows, cols: no line to measure across")
    return float(torch.stack(steps).mean())
