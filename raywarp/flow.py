"""Optical flow: estimation, backward warping and the masks derived from flow.

This module owns the flow conventions of raywarp. A flow is a (B, 2, H, W)
float tensor in pixels; channel 0 is the horizontal (x, column) displacement
and channel 1 the vertical (y, row) one. The forward flow f01 maps pixel p of
frame 0 to p + f01(p) in frame 1, and `warp` is a backward warp,
warp(x, f)(p) = x(p + f(p)), so warp(I1, f01) ≈ I0.

Estimation wraps OpenCV (DIS, Farneback); nothing here ever downloads. The masks follow the
forward-backward check of Sundaram et al. 2010 (as used in UnFlow, Meister et
al. 2018) and the motion-boundary test of Lai et al. 2018, so that the
warping-error metric in `raywarp.metrics` matches the published protocol.

A frame pair whose motion could not be found (a flash, a whip pan, a flat or noisy
frame: too little flow survives the checks) has no flow: NaN over the whole pair
(`restoration_flows`). `linked` tells which pairs have one; whatever follows the flow
(propagation, self-guidance, noise coordinates) leaves the unlinked pairs uncoupled.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from raywarp.tensors import as_batch, check_same_size, to_like

METHODS = ("dis", "farneback")
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
PADDING_MODES = ("border", "zeros", "reflection")
DIS_MIN_SIDE = 12  # OpenCV's DIS refuses frames whose sides are both shorter (cv2.error)

# RGB -> luma weights (ITU-R BT.601), the same ones cv2.COLOR_RGB2GRAY uses.
_LUMA = (0.299, 0.587, 0.114)
# Values this far outside [0, 1] mean the caller passed e.g. 0..255 images.
_RANGE_SLACK = 0.1


# --------------------------------------------------------------------------
# estimation


def estimate(a, b, method: str = "dis", preset: str = "medium", detail: float = 1.0, *,
             dis_level: int | None = None, blur: float | None = None):
    """Dense forward flow from frames `a` to `b`.

    a, b: (B, 3, H, W) RGB in [0, 1], torch or numpy ((3, H, W) also accepted).
    method: "dis" (OpenCV DIS) or "farneback" (OpenCV Farneback).
    preset: DIS speed/quality preset, one of "ultrafast", "fast", "medium"
        (validated for every method, used only by "dis"): patch size and iterations;
        the finest pyramid level and a blur follow `detail` instead (`dis_finest_scale`,
        `antialias_sigma`).
    detail: how many pixels of the frames one pixel of real detail spans: 1 for sharp
        frames, s for a baseline upsampled ×s (SR). Used only by "dis".
    dis_level, blur: override what `detail` sets (DIS's finest level, the Gaussian σ in
        px), to measure the rule (`python -m raywarp.bench.flow --detail-sweep`).
    Returns (B, 2, H, W) flow f with a(p) ≈ b(p + f(p)), float32, on a's
    device (numpy if `a` was numpy).
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}, expected one of {', '.join(METHODS)}")
    if preset not in DIS_PRESETS:
        raise ValueError(f"preset: unknown {preset!r}, expected one of {', '.join(DIS_PRESETS)}")
    if not detail >= 1:
        raise ValueError(f"detail: pixels per pixel of detail, at least 1, got {detail!r}")
    if dis_level is not None and not (isinstance(dis_level, int) and dis_level >= 0):
        raise ValueError(f"dis_level: a pyramid level, an int >= 0, got {dis_level!r}")
    if blur is not None and not blur >= 0:
        raise ValueError(f"blur: a Gaussian σ in pixels, >= 0, got {blur!r}")
    ta = as_batch(a, "a", channels=3)
    tb = as_batch(b, "b", channels=3)
    if ta.shape != tb.shape:
        raise ValueError(f"b: shape {tuple(tb.shape)} does not match a {tuple(ta.shape)}")
    for name, t in (("a", ta), ("b", tb)):
        lo, hi = float(t.min()), float(t.max())
        if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
            raise ValueError(f"{name}: expected RGB values in [0, 1], got range [{lo:.3g}, {hi:.3g}]")

    level = dis_finest_scale(detail) if dis_level is None else dis_level
    flow = _opencv(ta, tb, method, preset, level, antialias_sigma(detail) if blur is None else blur)
    return to_like(flow, a)


def antialias_sigma(detail: float) -> float:
    """Gaussian σ (pixels) DIS's frames are blurred with when their detail spans `detail`
    pixels: none for sharp frames; a quarter of the input's pixel for a baseline upsampled
    ×s. Above the input's Nyquist frequency a bicubic baseline holds aliasing, which moves
    differently from the scene and pulls the patch search off the true motion; a wider
    blur also takes the texture the search needs."""
    return detail / 4 if detail > 1 else 0.0


def dis_finest_scale(detail: float) -> int:
    """DIS's finest pyramid level (0: full resolution) for frames whose detail spans
    `detail` pixels: full resolution for sharp frames; for a baseline upsampled ×s, the
    level at twice the input's sampling, finer than which the frames hold only
    interpolation, aliasing and codec noise that mislead the patch search. (The presets
    stop at level 1 or 2 to save time, which costs sharp frames their finest motion.)"""
    return max(0, round(math.log2(detail)) - 1)


def _to_gray_u8(x: torch.Tensor, sigma: float = 0.0) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W) uint8 luma, the input OpenCV flow wants,
    blurred by a Gaussian of `sigma` px first (none at 0)."""
    w = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    y = (x.detach().float().cpu() * w).sum(1).clamp(0, 1).numpy()
    if sigma > 0:
        y = np.stack([cv2.GaussianBlur(g, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE) for g in y])
    return np.round(y * 255).astype(np.uint8)


def _opencv(a: torch.Tensor, b: torch.Tensor, method: str, preset: str, finest_scale: int,
            sigma: float) -> torch.Tensor:
    _, _, h, w = a.shape
    if method == "dis" and max(h, w) < DIS_MIN_SIDE:
        raise ValueError(f"a: DIS needs width or height >= {DIS_MIN_SIDE}, got {h}x{w}; use method='farneback'")
    if method != "dis":
        sigma = 0.0  # `detail` is DIS's
    ga, gb = _to_gray_u8(a, sigma), _to_gray_u8(b, sigma)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        dis.setFinestScale(finest_scale)

        def calc(p, n):
            return dis.calc(p, n, None)
    else:
        # Enough pyramid levels that the coarsest is ~16 px: catches motions of
        # a few tens of pixels without the coarsest level degenerating. The box
        # window (flags=0) measured more accurate than the Gaussian one here.
        levels = int(np.clip(np.floor(np.log2(max(min(h, w), 1) / 16)) + 1, 1, 5))

        def calc(p, n):
            return cv2.calcOpticalFlowFarneback(
                p, n, None, pyr_scale=0.5, levels=levels, winsize=15, iterations=3,
                poly_n=5, poly_sigma=1.1, flags=0,
            )
    # OpenCV flow is (H, W, 2) with [..., 0] = x: prev(y, x) ≈ next(y + fy, x + fx),
    # i.e. exactly our forward-flow convention.
    out = np.stack([calc(p, n) for p, n in zip(ga, gb)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(a.device)


# --------------------------------------------------------------------------
# warping


def _coords(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute sampling positions p + flow(p) in pixels: two (B, H, W) tensors."""
    _, _, h, w = flow.shape
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    return xs + flow[:, 0], ys + flow[:, 1]


def warp(x, flow, padding_mode: str = "border", mode: str = "bilinear"):
    """Backward warp: out(p) = x(p + flow(p)), interpolated bilinearly or bicubically.

    x: (B, C, H, W) any channels; flow: (B, 2, H, W) in pixels.
    padding_mode: "border" (clamp to the edge), "zeros" or "reflection",
        as in torch.nn.functional.grid_sample.
    mode: "bilinear" or "bicubic" (sharper: bilinear blurs sub-pixel shifts).
    Returns (B, C, H, W) in x's dtype. Differentiable in x and flow. Integer
    flows reproduce a shift (torch.roll) inside the frame, exactly up to the
    float32 rounding of grid_sample's normalised grid, an error of order
    1e-7 * max(H, W) (measured on [0, 1] noise: < 1e-5 at 64 px, ≈ 2e-4 at
    1920 px); pass float64 tensors where that matters.
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode: unknown {padding_mode!r}, expected one of {', '.join(PADDING_MODES)}")
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"mode: unknown interpolation {mode!r}, expected bilinear or bicubic")
    tx = as_batch(x, "x")
    tf = as_batch(flow, "flow", channels=2)
    check_same_size(x=tx, flow=tf)
    tf = tf.to(device=tx.device, dtype=tx.dtype)
    _, _, h, w = tx.shape
    gx, gy = _coords(tf)
    # align_corners=True puts -1/+1 on the centres of the first/last pixels,
    # so pixel i maps to 2 i / (size - 1) - 1. max(.., 1) keeps 1-px sides finite.
    gx = gx * (2.0 / max(w - 1, 1)) - 1.0
    gy = gy * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    out = F.grid_sample(tx, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    return to_like(out, x)


def in_frame(flow):
    """(B, 1, H, W) mask: 1 where p + flow(p) lies inside the image, else 0.

    Inside means within the pixel-centre rectangle [0, W-1] x [0, H-1], the
    region where bilinear warping needs no padding.
    """
    tf = as_batch(flow, "flow", channels=2)
    _, _, h, w = tf.shape
    gx, gy = _coords(tf)
    inside = (gx >= 0) & (gx <= w - 1) & (gy >= 0) & (gy <= h - 1)
    return to_like(inside.unsqueeze(1).to(tf.dtype), flow)


# --------------------------------------------------------------------------
# masks


def consistency_mask(fwd, bwd):
    """Forward-backward consistency (Sundaram et al. 2010; UnFlow).

    fwd: (B, 2, H, W) flow 0 -> 1; bwd: (B, 2, H, W) flow 1 -> 0.
    With w_f = fwd(p) and w_b = bwd(p + w_f) (= warp(bwd, fwd)), p is occluded
    when
        |w_f + w_b|^2 > 0.01 (|w_f|^2 + |w_b|^2) + 0.5,
    i.e. going there and back does not return to p. p is also marked 0 when
    p + w_f leaves the image. Returns (B, 1, H, W) float, 1 = consistent, in
    frame-0 coordinates.
    """
    f = as_batch(fwd, "fwd", channels=2)
    b = as_batch(bwd, "bwd", channels=2)
    check_same_size(fwd=f, bwd=b)
    b = b.to(device=f.device, dtype=f.dtype)
    bw = warp(b, f)
    sq = lambda v: (v * v).sum(1, keepdim=True)  # noqa: E731
    ok = sq(f + bw) <= 0.01 * (sq(f) + sq(bw)) + 0.5
    return to_like(ok.to(f.dtype) * in_frame(f), fwd)


def motion_boundary(flow):
    """Motion boundaries (Lai et al. 2018): 1 where |∇w|^2 > 0.01 |w|^2 + 0.002.

    flow: (B, 2, H, W). |∇w|^2 sums the squared forward differences
    w(x+1, y) - w(x, y) and w(x, y+1) - w(x, y) over both flow components; the
    last column/row has no forward neighbour and gets a zero difference.
    Returns (B, 1, H, W) float, 1 = boundary.
    """
    w = as_batch(flow, "flow", channels=2)
    dx = F.pad(w[..., :, 1:] - w[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(w[..., 1:, :] - w[..., :-1, :], (0, 0, 0, 1))
    grad2 = (dx * dx + dy * dy).sum(1, keepdim=True)
    mag2 = (w * w).sum(1, keepdim=True)
    return to_like((grad2 > 0.01 * mag2 + 0.002).to(w.dtype), flow)


def linked(flows) -> torch.Tensor:
    """(T−1,) bool: the pairs of flows (T−1, 2, H, W) that have a flow (no NaN: see the module docstring)."""
    if len(flows) == 0:  # a one-frame clip has no pairs
        return torch.zeros(0, dtype=torch.bool)
    f = as_batch(flows, "flows", channels=2, allow_nan=True)
    return torch.isfinite(f).flatten(1).all(1)


# DIS matches 8×8 patches: flow within 4 px of a hole was partly matched on the hole's
# fill, which does not move with the scene.
HOLE_MARGIN = 4


def trusted_matches(fwd, observed0, observed1, margin: int = HOLE_MARGIN):
    """(B, 1, H, W) 1 where the flow `fwd` (B, 2, H, W) from frame 0 to frame 1 rests on
    observed pixels only: it starts at least `margin` px from any hole of frame 0
    (`observed0` (B, 1, H, W), 1 = observed) and lands at least `margin` px from any hole
    of frame 1 (`observed1`). A static hole matched to itself is consistent both ways,
    so the forward-backward check alone keeps the wrong motion around it. Where this
    leaves a frame nothing, its observed start pixels are trusted instead.
    """
    o0 = as_batch(observed0, "observed0", channels=1)
    o1 = as_batch(observed1, "observed1", channels=1)
    if bool((o0 > 0.5).all()) and bool((o1 > 0.5).all()):
        return torch.ones_like(o0)

    def clear(o):  # observed with no hole within `margin` px
        return 1 - F.max_pool2d(1 - (o > 0.5).to(o.dtype), 2 * margin + 1, stride=1, padding=margin)

    trusted = clear(o0) * (warp(clear(o1), fwd, padding_mode="zeros") > 0.999).to(o0.dtype)
    empty = trusted.flatten(1).sum(1) == 0
    return torch.where(empty.view(-1, 1, 1, 1), (o0 > 0.5).to(o0.dtype), trusted)


def propagate(frames, known, fwd, bwd, sweeps: int = 2):
    """Carry known pixels along the flows into the unknown ones (flow-guided propagation,
    as video inpainting does before generating anything).

    frames: (T, C, H, W); known: (T, 1, H, W), 1 = known; fwd / bwd: (T−1, 2, H, W) flows
    t→t+1 and t+1→t, dense (in holes too: see `restoration_flows`); a pair without flow
    (NaN, see `linked`) carries nothing. An unknown pixel of
    frame t takes the value its flow finds in frame t+1 (or t−1) where all four pixels
    around that point are known and inside the frame; a pixel filled so is known from
    then on, so content travels across several frames. Each sweep runs back to front
    (pulling from t+1), then front to back (from t−1). Bicubic, so a pixel carried over
    n frames is resampled n times. Returns (frames, known) with the filled pixels.
    """
    x = as_batch(frames, "frames").clone()
    k = (as_batch(known, "known", channels=1) > 0.5).to(x.dtype)
    f = as_batch(fwd, "fwd", channels=2, allow_nan=True).to(x)
    b = as_batch(bwd, "bwd", channels=2, allow_nan=True).to(x)
    check_same_size(frames=x, known=k)
    check_same_size(fwd=f, bwd=b)
    t_count = x.shape[0]
    if f.shape[0] != t_count - 1 or f.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"fwd: need {t_count - 1} flows of {tuple(x.shape[-2:])} for {t_count} frames, "
                         f"got {tuple(f.shape)}")

    carries = (linked(f) & linked(b)).tolist()  # pair t carries between frames t and t+1

    def pull(t: int, source: int, flow: torch.Tensor) -> None:
        if not carries[min(t, source)]:
            return
        landing = (warp(k[source : source + 1], flow, padding_mode="zeros") > 0.999).to(x.dtype)
        fill = (1 - k[t : t + 1]) * landing * in_frame(flow)
        x[t : t + 1] = torch.lerp(x[t : t + 1], warp(x[source : source + 1], flow, mode="bicubic"), fill)
        k[t : t + 1] = k[t : t + 1] + fill

    for _ in range(sweeps):
        for t in range(t_count - 2, -1, -1):
            pull(t, t + 1, f[t : t + 1])
        for t in range(1, t_count):
            pull(t, t - 1, b[t - 1 : t])
    return to_like(x, frames), to_like(k, known)


# Densification lives in its own package (solver, tensors, network); exported here
# because it is part of the flow API the pipeline calls.
from raywarp.densify import densify  # noqa: E402,F401


def resize_flow(flow, size):
    """Flow (B, 2, H, W) resampled to `size` = (h, w), its vectors rescaled to the new pixels.

    Bilinear, antialiased when shrinking (a pooled flow, as the grid of a latent model
    sees it); returns `flow` itself when the size already matches.
    """
    f = as_batch(flow, "flow", channels=2, allow_nan=True)
    h, w = size
    if tuple(f.shape[-2:]) == (h, w):
        return flow
    shrink = h < f.shape[-2] or w < f.shape[-1]
    out = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    scale = torch.tensor([w / f.shape[-1], h / f.shape[-2]], dtype=out.dtype, device=out.device).view(1, 2, 1, 1)
    return to_like(out * scale, flow)


# A pair needs trusted flow on this share of its pixels, both ways, to be densified: the
# sparsest density the neuroexplicit densifier was trained and measured at (1 %).
MIN_TRUSTED = 0.01


def restoration_flows(guide, observed, size=None, method: str = "dis", densify_method: str = "neuroexplicit",
                      detail: float = 1.0):
    """The dense flows a restoration samples along, from a degraded clip.

    guide: (T,3,H,W) the frames to estimate motion on (the classical restoration, or the
    low-resolution input for SR); observed: (T,1,H,W) 1 where the measurement saw the
    pixel; size: (h, w) to return the flows at (the sampler's grid; default the guide's);
    detail: pixels of the guide per pixel of real detail (see `estimate`).
    Flow is estimated on the guide both ways and filled by `densify` wherever the
    forward–backward check fails or the match was not made between observed pixels
    (`trusted_matches`: an inpainting hole has no trustworthy motion of its own, nor
    does the flow next to it). A pair where either way less than `MIN_TRUSTED` of the
    pixels keeps its flow has none: NaN over the whole pair (see `linked`), to be sampled
    without coupling rather than densified from (almost) nothing.
    Frames too small for DIS have no flow at all.
    Returns (fwd (T−1,2,h,w), bwd (T−1,2,h,w)).
    """
    size = size or tuple(guide.shape[-2:])
    if method == "dis" and max(guide.shape[-2:]) < DIS_MIN_SIDE:
        none = torch.full((guide.shape[0] - 1, 2, *size), float("nan"), device=guide.device)
        return none, none.clone()
    fwd = estimate(guide[:-1], guide[1:], method=method, detail=detail)
    bwd = estimate(guide[1:], guide[:-1], method=method, detail=detail)
    fwd_known = consistency_mask(fwd, bwd) * trusted_matches(fwd, observed[:-1], observed[1:])
    bwd_known = consistency_mask(bwd, fwd) * trusted_matches(bwd, observed[1:], observed[:-1])
    found = (fwd_known.flatten(1).mean(1) >= MIN_TRUSTED) & (bwd_known.flatten(1).mean(1) >= MIN_TRUSTED)
    flows = []
    for flow, known, image in ((fwd, fwd_known, guide[:-1]), (bwd, bwd_known, guide[1:])):
        dense = torch.full_like(flow, float("nan"))
        if found.any():
            f, k = flow[found], known[found]
            dense[found] = densify(f, k, image[found], method=densify_method) if k.min() < 1 else f
        flows.append(resize_flow(dense, size))
    return tuple(flows)
