"""Video inverse problems: the degradations raywarp restores.

This module owns the measurement operators a diffusion sampler conditions on, the
classical baselines it must beat, hole masks parsed from command-line specs, and
the padding rules for models whose sizes must be multiples of some m.

Each operator is a small frozen dataclass with a linear map A and its Moore–Penrose
pseudo-inverse A⁺, so a DDNM-style sampler can enforce measurement consistency
after every denoiser prediction and once more at the end:

    x0 ← op.project(x0, y) = x0 + A⁺(y − A x0)        (then A x0 = y exactly)

    SuperResolution(scale, kernel)   A = separable downsampling Dy · x · Dxᵀ
    Inpainting(mask)                 A = mask · x   (1 = observed, 0 = hole)
    Denoising(sigma)                 A = I, y = x + σ n  (project is the identity)

Shapes: images x (B, C, H, W) at output size, C = 3 for RGB; a video is a batch of
its frames. Measurements y: (B, C, H/scale, W/scale) for SR, (B, C, H, W) else.
Masks (B, 1, H, W) float in {0, 1}. `forward` is the noiseless A; `degrade`
simulates the measurement a restoration starts from (A x, plus noise for
denoising). Nothing is ever resized: `pad_measurement` pads y (and the mask) to a
model's multiple, and `crop` cuts the restored output back.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from raywarp.densify.solver import pyramid_inpaint
from raywarp.densify.tensor_field import homogeneous_tensor
from raywarp.flow import propagate
from raywarp.tensors import as_batch, check_same_size, to_like

__all__ = [
    "Operator",
    "SuperResolution",
    "Inpainting",
    "Denoising",
    "TASKS",
    "KERNELS",
    "make_operator",
    "laplace_fill",
    "parse_mask",
    "pad_to_multiple",
    "crop",
    "pad_measurement",
]

TASKS = ("sr", "inpaint", "denoise")
KERNELS = ("area", "bicubic")
PAD_MODES = ("reflect", "replicate", "constant")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class Operator(Protocol):
    """A video measurement operator (see the module docstring). x: (B,C,H,W), y: measurement."""

    name: str

    def forward(self, x): ...  # A x, noiseless
    def degrade(self, x, generator=None): ...  # the measurement a restoration starts from
    def pinv(self, y): ...  # A⁺ y at output size
    def project(self, x, y): ...  # x + A⁺(y − A x)
    def baseline(self, y): ...  # the classical restoration to beat
    def known(self, y): ...  # (B,1,H,W) conditioning mask at output size
    def output_size(self, y) -> tuple[int, int]: ...
    def measurement_error(self, x, y) -> float: ...  # RMS of A x − y
    def select(self, start: int, stop: int) -> "Operator": ...  # the operator of frames [start, stop)
    # (operator, y) with what the flows carry into unobserved pixels observed too
    def propagated(self, y, fwd, bwd, anchors=None) -> tuple["Operator", torch.Tensor]: ...


# --------------------------------------------------------------------------------- helpers


def _rms(r: torch.Tensor) -> float:
    return float(r.double().pow(2).mean().sqrt())


def _reflect_index(idx: np.ndarray, n: int, edge: bool) -> np.ndarray:
    """Fold any integer indices into [0, n) by mirroring, as often as needed.

    edge=True mirrors about the pixel edge (… 1 0 | 0 1 …, MATLAB "symmetric");
    edge=False about the edge pixel (… 2 1 | 0 1 2 …, torch/OpenCV "reflect101").
    """
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n if edge else 2 * n - 2
    idx = np.mod(idx, period)
    return np.where(idx < n, idx, period - 1 - idx if edge else period - idx)


def _keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = −0.5: the PIL/MATLAB bicubic), support |t| < 2."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def _axis_matrices_f64(n: int, scale: int, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, D⁺) in float64 for one axis of length n: D is (n/scale, n), rows sum to 1."""
    m = n // scale
    d = np.zeros((m, n))
    rows = np.arange(m)
    if kernel == "area":
        for k in range(scale):
            d[rows, rows * scale + k] = 1.0 / scale
    else:
        # Antialiased downsampling: the kernel is stretched by the scale (support 4·scale
        # taps) and sampled at the input pixel centres around each output pixel's centre.
        centres = (rows + 0.5) * scale - 0.5
        taps = np.arange(-2 * scale, 2 * scale + 1)
        for i, c in enumerate(centres):
            j = np.floor(c).astype(int) + taps
            w = _keys_cubic((j - c) / scale)
            # Borders mirror about the edge (MATLAB imresize); mass on mirrored taps adds up.
            np.add.at(d[i], _reflect_index(j, n, edge=True), w)
        d /= d.sum(1, keepdims=True)
    dt = torch.from_numpy(d)
    # Exact pseudo-inverse in float64; D has full row rank, so D D⁺ = I.
    return dt, torch.linalg.pinv(dt)


@functools.lru_cache(maxsize=64)
def _axis_matrices(n: int, scale: int, kernel: str, dtype: torch.dtype, device: torch.device):
    d, p = _axis_matrices_f64(n, scale, kernel)
    return d.to(dtype=dtype, device=device), p.to(dtype=dtype, device=device)


def _check_size(size) -> tuple[int, int]:
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    if not ok or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"size: expected (H, W) positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"scale: expected an integer >= 2, got {scale!r}")
    if not math.isfinite(scale) or int(scale) != scale or scale < 2:
        raise ValueError(f"scale: expected an integer >= 2, got {scale!r}")
    return int(scale)


# ---------------------------------------------------------------------- super-resolution


@dataclass(frozen=True)
class SuperResolution:
    """Downsampling by an integer `scale` with a separable linear kernel.

    A x = Dy · x · Dxᵀ per channel, Dy (H/s × H) and Dx (W/s × W) built for the actual
    size (cached): kernel "area" averages s×s blocks (= F.avg_pool2d(x, s));
    "bicubic" is antialiased Keys (a = −0.5) bicubic downsampling as in MATLAB
    imresize / PIL (kernel stretched by s, borders mirrored, rows summing to 1).
    A⁺ y = Dy⁺ · y · Dx⁺ᵀ with the exact float64 pseudo-inverses of the axis matrices,
    so A A⁺ = I and `project` is exactly consistent. H and W must be divisible by s.

    `known` is all ones: no output pixel is observed directly, but every pixel is
    constrained by the measurement, which is what the conditioning mask means here.
    """

    scale: int = 4
    kernel: str = "bicubic"
    name: ClassVar[str] = "sr"

    def __post_init__(self):
        object.__setattr__(self, "scale", _check_scale(self.scale))
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel: unknown SR kernel {self.kernel!r}; choose one of {KERNELS}")

    def _matrices(self, x: torch.Tensor, h: int, w: int):
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        dy, py = _axis_matrices(h, self.scale, self.kernel, dtype, x.device)
        dx, px = _axis_matrices(w, self.scale, self.kernel, dtype, x.device)
        return dy, py, dx, px

    def _check_hr(self, x: torch.Tensor, name: str) -> None:
        h, w = x.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(
                f"{name}: size {h}x{w} is not divisible by scale {self.scale}; pad it first "
                "(pad_to_multiple / pad_measurement), never resize"
            )

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        dy, _, dx, _ = self._matrices(x, *x.shape[-2:])
        return (dy @ x.to(dy.dtype) @ dx.T).to(x.dtype)

    def _up(self, y: torch.Tensor) -> torch.Tensor:
        h, w = self.output_size(y)
        _, py, _, px = self._matrices(y, h, w)
        return (py @ y.to(py.dtype) @ px.T).to(y.dtype)

    def forward(self, x):
        """A x: (B,C,H,W) → (B,C,H/s,W/s)."""
        xt = as_batch(x, "x")
        self._check_hr(xt, "x")
        return to_like(self._down(xt), x)

    def degrade(self, x, generator=None):
        """The SR measurement: A x (noiseless; `generator` is unused)."""
        return self.forward(x)

    def pinv(self, y):
        """A⁺ y: (B,C,h,w) → (B,C,h·s,w·s), the minimum-norm image with A x = y."""
        return to_like(self._up(as_batch(y, "y")), y)

    def project(self, x, y):
        """x + A⁺(y − A x): the image nearest x (in L2) whose downsampling is exactly y."""
        xt, yt = self._pair(x, y)
        return to_like(xt + self._up(yt - self._down(xt)), x)

    def baseline(self, y):
        """Bicubic upsampling (torch, align_corners=False), clamped to [0, 1]."""
        yt = as_batch(y, "y")
        out = F.interpolate(yt, size=self.output_size(yt), mode="bicubic", align_corners=False)
        return to_like(out.clamp(0, 1), y)

    def known(self, y):
        """All ones (B,1,H,W): every output pixel is constrained by the measurement."""
        yt = as_batch(y, "y")
        return to_like(yt.new_ones(yt.shape[0], 1, *self.output_size(yt)), y)

    def output_size(self, y) -> tuple[int, int]:
        h, w = as_batch(y, "y").shape[-2:]
        return h * self.scale, w * self.scale

    def measurement_error(self, x, y) -> float:
        xt, yt = self._pair(x, y)
        return _rms(self._down(xt) - yt)

    def propagated(self, y, fwd, bwd, anchors=None) -> tuple["SuperResolution", torch.Tensor]:
        """(self, y): every output pixel is already constrained; nothing to carry."""
        return self, y

    def select(self, start: int, stop: int) -> "SuperResolution":
        """The same operator: SR does not vary over frames."""
        return self

    def _pair(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        xt, yt = as_batch(x, "x"), as_batch(y, "y")
        self._check_hr(xt, "x")
        lr = (xt.shape[-2] // self.scale, xt.shape[-1] // self.scale)
        if yt.shape[:2] != xt.shape[:2] or tuple(yt.shape[-2:]) != lr:
            raise ValueError(
                f"y: shape {tuple(yt.shape)} is not the x{self.scale} measurement of x {tuple(xt.shape)}"
            )
        return xt, yt.to(xt)


# ------------------------------------------------------------------------------ inpainting


def laplace_fill(y, known, steps: Sequence[int] | None = None):
    """Harmonic (Laplace) fill of y (B,C,H,W) where known (B,1,H,W) is 0.

    The steady state of homogeneous diffusion with the known pixels as Dirichlet data
    and mirrored image borders, i.e. Δu = 0 in the holes (5-point stencil), computed
    by the shared coarse-to-fine FSI solver of `raywarp.densify.solver` on image values.
    `steps` per pyramid level, coarsest first (default `_laplace_steps`: within ~1e-2
    (max) of the exact harmonic fill for a hole of a third of a 512×512 frame). Values
    of y in the holes are ignored (may be NaN). A frame with no known pixel is filled
    with mid-gray 0.5. Known pixels are returned unchanged.
    """
    yt = as_batch(y, "y", allow_nan=True)
    kt = as_batch(known, "known", channels=1).to(yt)
    if kt.shape[0] == 1 and yt.shape[0] > 1:
        kt = kt.expand(yt.shape[0], -1, -1, -1)
    check_same_size(y=yt, known=kt)
    kt = (kt > 0.5).to(yt.dtype)
    if not bool(torch.isfinite(yt)[kt.bool().expand_as(yt)].all()):
        raise ValueError("y: NaN or inf where known marks the pixel as observed")
    yt = torch.where(kt.bool(), yt, torch.zeros_like(yt))  # hole values are don't-care
    if bool(kt.all()):
        return to_like(yt, y)
    steps = list(steps) if steps is not None else _laplace_steps(*yt.shape[-2:])
    if not steps or any(int(s) < 0 for s in steps):
        raise ValueError(f"steps: need one non-negative step count per level, got {tuple(steps)}")
    # pyramid_inpaint halves values per coarser level (it was written for flow in pixels)
    # and doubles them back on the way up; Laplace diffusion is linear, so that cancels.
    out = pyramid_inpaint(yt, kt, yt, lambda level, img: homogeneous_tensor(img), steps=[int(s) for s in steps])
    empty = kt.flatten(1).amax(1) == 0
    if bool(empty.any()):
        out = torch.where(empty[:, None, None, None], torch.full_like(out, 0.5), out)
    return to_like(torch.where(kt.bool(), yt, out), y)


def _laplace_steps(h: int, w: int) -> list[int]:
    """Default solver schedule: halve until the coarsest side is ≤ 16 px; the coarsest
    level (tiny, cheap) runs to convergence, finer levels only correct the upsampling."""
    levels = 1
    while min(h, w) > 16 * 2 ** (levels - 1) and levels < 8:
        levels += 1
    return [200] + [60] * (levels - 2) + [100] * (levels > 1)


@dataclass(frozen=True, eq=False)
class Inpainting:
    """Fill holes: A x = mask · x, with mask 1 = observed, 0 = hole.

    `mask` is (T,1,H,W) with one mask per video frame, or (1,1,H,W) for a static mask
    broadcast over frames; values must be 0 or 1. A is an orthogonal projector, so
    A⁺ = A and project(x, y) = mask·y + (1−mask)·x keeps observed pixels exactly.
    Values of y in the holes are ignored everywhere (a raw frame works as y).

    Clips: an operator with T per-frame masks applies to a batch of exactly T frames
    (or any batch if T = 1). To restore frames [s, e) of the video, use
    `op.select(s, e)`, the operator with that span's masks.
    """

    mask: torch.Tensor = field(repr=False)
    name: ClassVar[str] = "inpaint"

    def __post_init__(self):
        m = self.mask
        if isinstance(m, np.ndarray) and m.dtype == bool:
            m = m.astype(np.float32)
        if isinstance(m, torch.Tensor) and m.dtype == torch.bool:
            m = m.float()
        m = as_batch(m, "mask", channels=1)
        if bool(((m != 0) & (m != 1)).any()):
            raise ValueError("mask: values must be 0 (hole) or 1 (observed)")
        object.__setattr__(self, "mask", m)

    def __repr__(self) -> str:
        return f"Inpainting(mask={tuple(self.mask.shape)}, observed={float(self.mask.mean()):.3f})"

    @property
    def frames(self) -> int:
        """Number of per-frame masks (1 for a static mask)."""
        return self.mask.shape[0]

    def select(self, start: int, stop: int) -> "Inpainting":
        """The operator for frames [start, stop) of the video (itself if the mask is static)."""
        if self.frames == 1:
            return self
        if not (0 <= start < stop <= self.frames):
            raise ValueError(f"start, stop: frame span [{start}, {stop}) is not inside the {self.frames} masked frames")
        return Inpainting(self.mask[start:stop])

    def _mask_for(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """The mask as (B,1,H,W) on t's device and dtype, checked against t (B,C,H,W)."""
        m = self.mask
        if tuple(m.shape[-2:]) != tuple(t.shape[-2:]) or m.shape[0] not in (1, t.shape[0]):
            raise ValueError(
                f"{name}: shape {tuple(t.shape)} does not match mask {tuple(m.shape)} "
                "(same height/width; as many frames, or a static mask; use select(start, stop) for a clip)"
            )
        if m.stride(0) == 0:
            m = m[:1]  # a static mask broadcast over frames (parse_mask): move one frame only
        return m.to(device=t.device, dtype=t.dtype).expand(t.shape[0], -1, -1, -1)

    def forward(self, x):
        """A x = mask · x (B,C,H,W): holes set to 0."""
        xt = as_batch(x, "x")
        return to_like(self._mask_for(xt, "x") * xt, x)

    def degrade(self, x, generator=None):
        """The inpainting measurement: A x (noiseless; `generator` is unused)."""
        return self.forward(x)

    def pinv(self, y):
        """A⁺ y = mask · y (A is an orthogonal projector)."""
        yt = as_batch(y, "y", allow_nan=True)
        m = self._mask_for(yt, "y")
        return to_like(torch.where(m.bool(), yt, torch.zeros_like(yt)), y)

    def project(self, x, y):
        """mask · y + (1 − mask) · x: observed pixels from y, exactly; holes from x."""
        xt = as_batch(x, "x")
        yt = as_batch(y, "y", allow_nan=True).to(xt)
        check_same_size(x=xt, y=yt)
        m = self._mask_for(xt, "x")
        return to_like(torch.where(m.bool(), yt, xt), x)

    def propagated(self, y, fwd, bwd, anchors=None) -> tuple["Inpainting", torch.Tensor]:
        """The clip's operator and measurement with every hole pixel that the flows fwd /
        bwd (T−1, 2, H, W, at output size) trace to an observed pixel of another frame
        observed as that pixel (`raywarp.flow.propagate`): what was seen once is copied,
        and only what no frame saw is left to generate. anchors: {frame: (C, H, W) image}
        of frames known whole (restored by a neighbouring clip), sources like any other.
        Returns (Inpainting with per-frame masks, y (T, C, H, W))."""
        yt = as_batch(y, "y", allow_nan=True)
        mask = self._mask_for(yt, "y").clone()
        sources = torch.where(mask.bool(), yt, torch.zeros_like(yt))
        for j, image in (anchors or {}).items():
            sources[j], mask[j] = image.to(sources), 1
        filled, known = propagate(sources, mask, fwd, bwd)
        return Inpainting(known), to_like(filled.clamp(0, 1) * known, y)

    def baseline(self, y):
        """Harmonic (Laplace) fill of every channel in the holes (`laplace_fill`)."""
        yt = as_batch(y, "y", allow_nan=True)
        return to_like(laplace_fill(yt, self._mask_for(yt, "y")), y)

    def known(self, y):
        """The mask (B,1,H,W): 1 where the output pixel is observed."""
        yt = as_batch(y, "y", allow_nan=True)
        return to_like(self._mask_for(yt, "y").clone(), y)

    def output_size(self, y) -> tuple[int, int]:
        return tuple(as_batch(y, "y", allow_nan=True).shape[-2:])

    def measurement_error(self, x, y) -> float:
        """RMS of A x − y over the observed values (the holes carry no measurement)."""
        xt = as_batch(x, "x")
        yt = as_batch(y, "y", allow_nan=True).to(xt)
        check_same_size(x=xt, y=yt)
        m = self._mask_for(xt, "x").expand_as(xt).bool()
        return _rms((xt - yt)[m]) if bool(m.any()) else 0.0


# ------------------------------------------------------------------------------- denoising


@dataclass(frozen=True)
class Denoising:
    """Additive white Gaussian noise: y = x + σ n, A = I, σ in [0, 1] image units.

    pinv is the identity, but `project` returns x unchanged: the hard projection
    x + A⁺(y − A x) = y would put all the noise back. Consistency with a noisy
    measurement means a residual of about σ, not zero (`measurement_error`).
    """

    sigma: float = 0.05
    name: ClassVar[str] = "denoise"

    def __post_init__(self):
        try:
            sigma = float(self.sigma)
        except (TypeError, ValueError):
            raise ValueError(f"sigma: expected a number > 0, got {self.sigma!r}") from None
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma: expected a finite number > 0, got {self.sigma!r}")
        object.__setattr__(self, "sigma", sigma)

    def forward(self, x):
        """A x = x (the noise is not part of A; see `degrade`)."""
        return to_like(as_batch(x, "x"), x)

    def degrade(self, x, generator=None):
        """y = x + σ n, n ~ N(0, I) drawn from `generator` (a torch.Generator or int seed). Not clamped."""
        xt = as_batch(x, "x")
        if isinstance(generator, int) and not isinstance(generator, bool):
            generator = torch.Generator(device=xt.device).manual_seed(generator)
        n = torch.randn(xt.shape, generator=generator, dtype=xt.dtype, device=xt.device)
        return to_like(xt + self.sigma * n, x)

    def pinv(self, y):
        return to_like(as_batch(y, "y"), y)

    def project(self, x, y):
        """x unchanged (a hard projection onto the noisy y would re-add the noise)."""
        xt, yt = as_batch(x, "x"), as_batch(y, "y")
        check_same_size(x=xt, y=yt)
        return to_like(xt, x)

    def baseline(self, y):
        """The noisy measurement clamped to [0, 1]."""
        return to_like(as_batch(y, "y").clamp(0, 1), y)

    def known(self, y):
        yt = as_batch(y, "y")
        return to_like(yt.new_ones(yt.shape[0], 1, *yt.shape[-2:]), y)

    def output_size(self, y) -> tuple[int, int]:
        return tuple(as_batch(y, "y").shape[-2:])

    def measurement_error(self, x, y) -> float:
        """RMS(x − y): about σ for a good denoiser (0 means it copied the noise)."""
        xt, yt = as_batch(x, "x"), as_batch(y, "y")
        check_same_size(x=xt, y=yt)
        return _rms(xt - yt.to(xt))

    def propagated(self, y, fwd, bwd, anchors=None) -> tuple["Denoising", torch.Tensor]:
        """(self, y): every pixel is observed (with noise); nothing to carry."""
        return self, y

    def select(self, start: int, stop: int) -> "Denoising":
        return self


def make_operator(task: str, scale=4, kernel: str = "bicubic", mask=None, sigma: float = 0.05) -> Operator:
    """The operator for `task` in TASKS ("sr", "inpaint", "denoise").

    mask: a (T,1,H,W) or (1,1,H,W) tensor/array (1 = observed) for "inpaint"; turn a
    spec string into one with `parse_mask(spec, size, frames)` first.
    """
    if task == "sr":
        return SuperResolution(scale, kernel)
    if task == "inpaint":
        if mask is None:
            raise ValueError("mask: task 'inpaint' needs a mask (T,1,H,W), 1 = observed")
        if isinstance(mask, str):
            raise ValueError(f"mask: got the spec {mask!r}; build the mask with parse_mask(spec, size, frames)")
        return Inpainting(mask)
    if task == "denoise":
        return Denoising(sigma)
    raise ValueError(f"task: unknown task {task!r}; choose one of {TASKS}")


# ------------------------------------------------------------------------------ mask specs

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SHAPE = re.compile(rf"^(rect|circle):\s*({_NUMBER}(?:\s*,\s*{_NUMBER})*)\s*(?:@\s*({_NUMBER})\s*,\s*({_NUMBER}))?$")


def parse_mask(spec: str, size, frames: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Build the (stop − start, 1, H, W) float32 mask (1 = observed, 0 = hole) of frames
    [start, stop) (default: all) of a `frames`-frame video from a spec.

    In specs and mask files the SHAPE (or the white pixels) marks the HOLE to inpaint.

    - `rect:x0,y0,x1,y1`: hole x0 ≤ x < x1, y0 ≤ y < y1;
    - `circle:cx,cy,r`: hole (x − cx)² + (y − cy)² ≤ r²;
      coordinates are continuous with pixel (col, row) covering [col, col+1) × [row, row+1)
      and tested at its centre (col + ½, row + ½), so `rect:10,5,20,8` is exactly
      columns 10..19 of rows 5..7. If every number of a shape lies in [0, 1] they are
      fractions: x of the width, y of the height, r of min(H, W); otherwise pixels.
    - `shape@dx,dy`: the shape moves by (dx, dy) pixels per frame (frame t: t·(dx, dy));
    - `shape+shape+…`: the union of the holes;
    - `file:PATH`: an image (PNG/JPG…) of exactly H×W, white (> 127) = hole, same for
      every frame;
    - `dir:PATH`: one such image per frame, the files in sorted name order; their count
      must equal `frames`.

    Only the span's frames are evaluated (its mask files read), so a unit's mask costs
    what its own frames cost, whatever the video's length. A static mask comes back as a
    broadcast view over frames (no copy per frame): call `.contiguous()` before writing
    into it. Raises ValueError naming the spec.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec: expected a mask spec string, got {spec!r}")
    h, w = _check_size(size)
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames: expected an int >= 1, got {frames!r}")
    stop = frames if stop is None else stop
    if not 0 <= start < stop <= frames:
        raise ValueError(f"start, stop: expected 0 <= start < stop <= frames = {frames}, got {start}, {stop}")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "file":
        hole = _read_hole(rest.strip(), (h, w), spec)
        return torch.from_numpy(~hole).float()[None, None].expand(stop - start, 1, h, w)
    if kind == "dir":
        files = _mask_files(rest.strip(), frames, spec)[start:stop]
        return torch.from_numpy(~np.stack([_read_hole(f, (h, w), spec) for f in files])).float()[:, None]
    static, moving = _shape_holes(spec, (h, w))
    if not moving:
        return torch.from_numpy(~static).float()[None, None].expand(stop - start, 1, h, w)
    holes = np.stack([static | functools.reduce(np.logical_or, (f(t) for f in moving)) for t in range(start, stop)])
    return torch.from_numpy(~holes).float()[:, None]


def _mask_files(path: str, frames: int, spec: str) -> list[str]:
    """The mask images of a `dir:` spec in frame order; exactly one per frame."""
    if not os.path.isdir(path):
        raise ValueError(f"spec {spec!r}: {path!r} is not a directory")
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
    if len(files) != frames:
        raise ValueError(f"spec {spec!r}: found {len(files)} mask images in {path!r}, expected {frames} (one per frame)")
    return [os.path.join(path, f) for f in files]


def _shape_holes(spec: str, size: tuple[int, int]):
    """(static hole (H, W) bool, [hole_at(t) -> (H, W) bool of each moving shape]) of a
    spec of shapes joined by '+'."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5  # pixel centres
    static = np.zeros((h, w), bool)
    moving = []
    for term in spec.split("+"):
        match = _SHAPE.match(term.strip())
        if match is None:
            raise ValueError(
                f"spec {spec!r}: cannot parse {term.strip()!r}; expected rect:x0,y0,x1,y1 or circle:cx,cy,r "
                "(optionally @dx,dy), shapes joined by '+', or file:PATH / dir:PATH"
            )
        shape, numbers, dx, dy = match.groups()
        values = [float(v) for v in numbers.split(",")]
        need = 4 if shape == "rect" else 3
        if len(values) != need:
            raise ValueError(f"spec {spec!r}: {shape} needs {need} numbers, got {len(values)} in {term.strip()!r}")
        if all(0 <= v <= 1 for v in values):
            values = [v * s for v, s in zip(values, (w, h, w, h) if shape == "rect" else (w, h, min(h, w)))]
        if shape == "circle" and values[2] < 0:
            raise ValueError(f"spec {spec!r}: circle radius must be >= 0, got {values[2]}")

        def hole_at(t: int, shape=shape, values=values, dx=float(dx or 0), dy=float(dy or 0)) -> np.ndarray:
            px, py = xs - t * dx, ys - t * dy
            if shape == "rect":
                x0, y0, x1, y1 = values
                return (px >= x0) & (px < x1) & (py >= y0) & (py < y1)
            cx, cy, r = values
            return (px - cx) ** 2 + (py - cy) ** 2 <= r * r

        if dx is None:
            static |= hole_at(0)
        else:
            moving.append(hole_at)
    return static, moving


def check_mask_spec(spec: str) -> None:
    """Raise ValueError naming what is wrong with a mask spec, before any video is read:
    shapes must parse, mask files and folders must exist and hold images (their sizes
    are checked against each video when it is restored)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec: expected a mask spec string, got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    path = rest.strip()
    if kind.strip().lower() == "file":
        if not os.path.isfile(path) or cv2.imread(path, cv2.IMREAD_UNCHANGED) is None:
            raise ValueError(f"spec {spec!r}: {path!r} is not a readable image file")
    elif kind.strip().lower() == "dir":
        if not os.path.isdir(path) or not any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(path)):
            raise ValueError(f"spec {spec!r}: {path!r} is not a directory of mask images")
    else:
        parse_mask(spec, (8, 8), 1)


def _read_hole(path: str, size: tuple[int, int], spec: str) -> np.ndarray:
    """Bool (H, W) hole map from a mask image: white (> 127) = hole. Must be exactly `size`."""
    if not os.path.isfile(path):
        raise ValueError(f"spec {spec!r}: mask file {path!r} does not exist")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"spec {spec!r}: cannot read {path!r} as an image")
    if img.ndim == 3:
        # Colour or alpha: use the first channel's gray level (masks are black/white).
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2GRAY) if img.shape[2] >= 3 else img[:, :, 0]
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) / np.iinfo(img.dtype).max * 255) if img.dtype.kind == "u" else img * 255.0
    if img.shape != tuple(size):
        raise ValueError(
            f"spec {spec!r}: mask {path!r} is {img.shape[0]}x{img.shape[1]}, expected {size[0]}x{size[1]} (never resized)"
        )
    return np.asarray(img) > 127


# ---------------------------------------------------------------------------------- padding


def _pad_index(n: int, total: int, mode: str, device) -> torch.Tensor:
    idx = np.arange(total)
    idx = np.minimum(idx, n - 1) if mode == "replicate" else _reflect_index(idx, n, edge=False)
    return torch.from_numpy(idx).to(device)


def pad_to_multiple(x, multiple: int, mode: str = "reflect"):
    """Pad x (B,C,H,W) at the bottom and right to the next multiple of `multiple`.

    mode: "reflect" (mirror about the edge pixel, any pad size), "replicate" or
    "constant" (zeros). Returns (padded, (H, W)); `crop(padded, (H, W))` undoes it.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple: expected an int >= 1, got {multiple!r}")
    if mode not in PAD_MODES:
        raise ValueError(f"mode: unknown padding mode {mode!r}; choose one of {PAD_MODES}")
    xt = as_batch(x, "x", allow_nan=True)
    h, w = xt.shape[-2:]
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if (hp, wp) == (h, w):
        return to_like(xt, x), (h, w)
    if mode == "constant":
        out = F.pad(xt, (0, wp - w, 0, hp - h))
    else:
        out = xt.index_select(-2, _pad_index(h, hp, mode, xt.device))
        out = out.index_select(-1, _pad_index(w, wp, mode, xt.device))
    return to_like(out, x), (h, w)


def crop(x, size):
    """x (B,C,H',W') cut to its top-left (H, W) = `size`; undoes `pad_to_multiple`."""
    xt = as_batch(x, "x", allow_nan=True)
    h, w = _check_size(size)
    if h > xt.shape[-2] or w > xt.shape[-1]:
        raise ValueError(f"size: {h}x{w} is larger than x {xt.shape[-2]}x{xt.shape[-1]}")
    return to_like(xt[..., :h, :w], x)


def pad_measurement(op: Operator, y, multiple: int, mode: str = "reflect"):
    """Pad a measurement so the restored output is a multiple of `multiple` in H and W.

    Returns (padded_op, padded_y, (H, W)) with (H, W) = op.output_size(y). The sampler
    restores x at the padded size with padded_op / padded_y, then `crop(x, (H, W))`.
    - SR: y is padded to a multiple of multiple / gcd(multiple, scale) low-res pixels,
      so the output (scale × that) is a multiple; the operator is size-agnostic. The
      padded y is a valid measurement (A is onto). After cropping, the area kernel stays
      exactly consistent (blocks do not straddle the cut); the bicubic kernel's support
      crosses it, so finish with op.project(crop(x, size), y) on the original y.
    - Inpainting: y and the masks are padded alike (mirrored pixels count as observed
      where their source was), so the model fills only the mirrored holes.
    - Denoising: y is padded.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple: expected an int >= 1, got {multiple!r}")
    if not isinstance(op, (SuperResolution, Inpainting, Denoising)):
        raise ValueError(f"op: unsupported operator {type(op).__name__}")
    size = op.output_size(y)
    if isinstance(op, SuperResolution):
        yp, _ = pad_to_multiple(y, multiple // math.gcd(multiple, op.scale), mode)
        return op, yp, size
    yp, _ = pad_to_multiple(y, multiple, mode)
    if isinstance(op, Inpainting):
        # "constant" pads the mask with zeros: the padding becomes a hole the model fills.
        mp, _ = pad_to_multiple(op.mask, multiple, mode)
        return Inpainting(mp), yp, size
    return op, yp, size
