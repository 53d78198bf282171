"""The explicit anisotropic-diffusion inpainting solver shared by every densifier.

Fills u where the known-mask is 0 by evolving  ∂u/∂t = div(D ∇u)  with the known
values re-imposed after every step (Dirichlet data). One solver serves all three
methods; they differ only in the diffusion tensor D (see `tensor_field.py`).

- Discretisation: the nonnegative δ-stencil of Weickert, Welk and Wickert (2013).
  With D = [[a, b], [b, c]] and per-pixel stencil parameter α ∈ (0, ½):
      δ = α (a + c) + (1 − 2α) |b|
  edge weights between a pixel and its neighbour (averaged over the two pixels):
      horizontal a − δ,  vertical c − δ,  diagonal (1,1): (b + δ)/2,
      anti-diagonal (1,−1): (δ − b)/2.
  For constant D this reproduces a u_xx + 2b u_xy + c u_yy exactly (second-order);
  the flux form is symmetric, conserves mass and has Neumann boundaries.
- Fast Semi-Iterative (FSI) acceleration (Hafner et al. 2016): within a cycle of n
  explicit steps  u^{k+1} = α_k (u^k + τ A u^k) + (1 − α_k) u^{k−1},
  α_k = (4k+2)/(2k+3), u^{−1} = u^0, reaching stopping time ~τ n²/3 instead of τ n.
- Coarse-to-fine pyramid: masks by 2×2 max-pool, flow by masked average (values
  halved: flow is in pixels), image by average; each level starts from the
  bilinear upsampling of the coarser result.

Everything is plain differentiable torch, so a network that predicts D trains
through the solver. Shapes: u, f (B, C, H, W); known (B, 1, H, W) in {0, 1};
tensor entries a, b, c and alpha (B, 1, H, W).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

# A tensor field is (a, b, c, alpha), each (B, 1, H, W).
TensorField = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def stencil_weights(a, b, c, alpha):
    """Edge weights of the δ-stencil, assembled from 2×2 cells.

    Each cell of four pixels takes the mean of their a, b, c, α and contributes the
    quadratic form ½(a−δ)(two horizontal differences²) + ½(c−δ)(two vertical) +
    ½(b+δ)(diagonal²) + ½(δ−b)(anti-diagonal²) = ∇uᵀD∇u + (a+c−2δ) k²/4, with k the
    cell's checkerboard mode. Since a + c ≥ 2δ whenever D is positive semidefinite and
    α ∈ [0, ½], the assembled operator is negative semidefinite for any D: the scheme is
    L2-stable even where individual weights are negative (strong anisotropy).

    Returns (w_x, w_y, w_d1, w_d2) for the edges between pixel (y, x) and
    (y, x+1): (B,1,H,W−1); (y+1, x): (B,1,H−1,W); (y+1, x+1): (B,1,H−1,W−1);
    and between (y+1, x) and (y, x+1): (B,1,H−1,W−1).
    """
    def cell(t):
        return (t[..., 1:, 1:] + t[..., 1:, :-1] + t[..., :-1, 1:] + t[..., :-1, :-1]) / 4

    a, b, c, alpha = cell(a), cell(b), cell(c), cell(alpha)
    delta = alpha * (a + c) + (1 - 2 * alpha) * b.abs()
    ax, cy = (a - delta) / 2, (c - delta) / 2
    # An axis edge lies in the cell above and below it (left and right); border edges in one.
    w_x = F.pad(ax, (0, 0, 1, 0)) + F.pad(ax, (0, 0, 0, 1))
    w_y = F.pad(cy, (1, 0)) + F.pad(cy, (0, 1))
    return w_x, w_y, (b + delta) / 2, (delta - b) / 2


def apply_stencil(u: torch.Tensor, weights) -> torch.Tensor:
    """A u = div(D ∇u) in flux form: Σ over edges of w (u_neighbour − u). (B,C,H,W)."""
    w_x, w_y, w_d1, w_d2 = weights
    e_x = w_x * (u[..., :, 1:] - u[..., :, :-1])
    e_y = w_y * (u[..., 1:, :] - u[..., :-1, :])
    e_d1 = w_d1 * (u[..., 1:, 1:] - u[..., :-1, :-1])
    e_d2 = w_d2 * (u[..., :-1, 1:] - u[..., 1:, :-1])
    # Each edge flux enters one end with + and the other with − (F.pad: left, right, top, bottom).
    return (
        F.pad(e_x, (0, 1)) - F.pad(e_x, (1, 0))
        + F.pad(e_y, (0, 0, 0, 1)) - F.pad(e_y, (0, 0, 1, 0))
        + F.pad(e_d1, (0, 1, 0, 1)) - F.pad(e_d1, (1, 0, 1, 0))
        + F.pad(e_d2, (0, 1, 1, 0)) - F.pad(e_d2, (1, 0, 0, 1))
    )


def stable_step_size(weights) -> torch.Tensor:
    """Largest stable explicit step per batch item, (B,1,1,1).

    A u is symmetric with spectral radius at most max_p 2 Σ_edges |w| (Gershgorin), so
    τ = 1 / max Σ|w| keeps every mode of 1 + τA in [−1, 1]. For nonnegative weights this
    is the classical bound 1 / (4 (1 − α)) at D = I; it stays safe where a strongly
    anisotropic D makes some weights negative. A 1 % margin keeps FSI inside the region.
    """
    w_x, w_y, w_d1, w_d2 = (w.detach().abs() for w in weights)
    row = (
        F.pad(w_x, (0, 1)) + F.pad(w_x, (1, 0)) + F.pad(w_y, (0, 0, 0, 1)) + F.pad(w_y, (0, 0, 1, 0))
        + F.pad(w_d1, (0, 1, 0, 1)) + F.pad(w_d1, (1, 0, 1, 0)) + F.pad(w_d2, (0, 1, 1, 0)) + F.pad(w_d2, (1, 0, 0, 1))
    )
    return 0.99 / row.amax((1, 2, 3), keepdim=True).clamp_min(1e-6)


def fsi_inpaint(u, f, known, field: TensorField, steps: int, cycle: int | None = None, fsi: bool = True):
    """Run `steps` explicit steps of diffusion inpainting from u, known values f re-imposed.

    u, f: (B,C,H,W); known: (B,1,H,W). With `fsi`, steps are grouped in FSI cycles of
    length `cycle` (default: one cycle of all steps); without, plain explicit steps.
    """
    a, b, c, alpha = field
    weights = stencil_weights(a, b, c, alpha)
    tau = stable_step_size(weights)
    u = known * f + (1 - known) * u
    cycle = cycle or max(steps, 1)
    done = 0
    while done < steps:
        n = min(cycle, steps - done)
        u_prev = u
        for k in range(n):
            u_next = u + tau * apply_stencil(u, weights)
            if fsi:
                omega = (4 * k + 2) / (2 * k + 3)
                u_next = omega * u_next + (1 - omega) * u_prev
            u_prev, u = u, known * f + (1 - known) * u_next
        done += n
    return u


def downsample(x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """2×2 (weighted) average, ceil mode so odd sizes keep their last row/column."""
    if weight is None:
        weight = torch.ones_like(x[:, :1])
    num = F.avg_pool2d(x * weight, 2, ceil_mode=True)
    den = F.avg_pool2d(weight, 2, ceil_mode=True)
    return num / den.clamp_min(1e-12)


def pyramid_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Sizes from fine to coarse, halving (ceil) per level."""
    sizes = [(height, width)]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def pyramid_inpaint(
    flow: torch.Tensor,
    known: torch.Tensor,
    image: torch.Tensor,
    field_fn: Callable[[int, torch.Tensor], TensorField],
    steps: Sequence[int] = (5, 15, 30, 45),
    cycle: int | None = None,
    fsi: bool = True,
) -> torch.Tensor:
    """Coarse-to-fine diffusion inpainting of flow (B,2,H,W) where known (B,1,H,W) is 0.

    `steps` are per level, coarsest first (len(steps) = number of levels).
    `field_fn(level, image_at_level)` returns the diffusion tensor field for that
    level (level 0 is the finest). Returns the filled flow (B,2,H,W).
    """
    levels = len(steps)
    flows, masks, images = [flow], [known], [image]
    for _ in range(levels - 1):
        flows.append(downsample(flows[-1], masks[-1]) * 0.5)  # flow is in pixels
        masks.append(F.max_pool2d(masks[-1], 2, ceil_mode=True))
        images.append(downsample(images[-1]))
    u = None
    for level in reversed(range(levels)):
        f, m, img = flows[level], masks[level], images[level]
        if u is None:
            # Start from the mean known flow: closer than zero for global motion.
            mean = (f * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp_min(1)
            u = mean.expand_as(f)
        else:
            u = 2.0 * F.interpolate(u, size=f.shape[-2:], mode="bilinear", align_corners=False)
        u = fsi_inpaint(u, f, m, field_fn(level, img), steps[levels - 1 - level], cycle, fsi)
    return u
