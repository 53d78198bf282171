"""Diffusion tensors D = μ₁ v vᵀ + μ₂ v⊥ v⊥ᵀ for the inpainting solver.

Three sources of D, one per densification method:
- homogeneous (Laplace): D = I;
- edge-enhancing (EED): v along the smoothed image gradient, μ₁ = g(|∇I_σ|²)
  with the Perona–Malik diffusivity g(s) = 1 / (1 + s/λ²), μ₂ = 1: flow is smoothed
  along image edges and not across them;
- learned (neuroexplicit): v, μ₁, μ₂ and α predicted per pixel by a network
  (`network.py`), mapped through `tensor_from_parts`.

All return (a, b, c, alpha), each (B, 1, H, W), with eigenvalues of D in [0, 1]
(the solver's step size assumes it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raywarp.densify.solver import TensorField

# EED parameters tuned by grid search on the training generator (σ ∈ {0.5, 1, 2},
# λ ∈ {0.01, 0.02, 0.05, 0.1}): the fair baseline, and the prior the network corrects.
EED_SIGMA = 1.0
EED_CONTRAST = 0.02
EED_ALPHA = 0.4


def tensor_from_parts(v: torch.Tensor, mu1: torch.Tensor, mu2: torch.Tensor, alpha: torch.Tensor) -> TensorField:
    """D entries from a unit vector v (B,2,H,W) (x, y) and eigenvalues μ₁ (along v), μ₂ (across)."""
    vx, vy = v[:, :1], v[:, 1:2]
    a = mu1 * vx * vx + mu2 * vy * vy
    b = (mu1 - mu2) * vx * vy
    c = mu1 * vy * vy + mu2 * vx * vx
    return a, b, c, alpha


def homogeneous_tensor(image: torch.Tensor, alpha: float = 0.0) -> TensorField:
    """D = I at every pixel of image (B,C,H,W): plain Laplace inpainting (5-point stencil at α=0)."""
    one = torch.ones_like(image[:, :1])
    return one, torch.zeros_like(one), one, alpha * one


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,C,H,W), reflecting borders, truncated at 3σ."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    ch = x.shape[1]
    pad_h, pad_w = min(radius, x.shape[-2] - 1), min(radius, x.shape[-1] - 1)
    # Reflect padding needs pad < size; fall back to replicate for tiny images.
    mode = "reflect" if pad_h == radius and pad_w == radius else "replicate"
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(ch, 1, 1, 1), groups=ch)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(ch, 1, 1, 1), groups=ch)


def image_gradient(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences (B,C,H,W) → (gx, gy), replicate borders."""
    p = F.pad(image, (1, 1, 1, 1), mode="replicate")
    gx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
    gy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
    return gx, gy


def dominant_structure(image: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit dominant eigenvector v (B,2,H,W) and eigenvalue s (B,1,H,W) of the colour
    structure tensor Σ_c ∇I_c,σ ∇I_c,σᵀ (for one channel: the gradient direction and |∇I_σ|²)."""
    gx, gy = image_gradient(gaussian_blur(image, sigma))
    jxx, jxy, jyy = (gx * gx).sum(1, keepdim=True), (gx * gy).sum(1, keepdim=True), (gy * gy).sum(1, keepdim=True)
    # Closed-form eigen-decomposition of the 2×2 symmetric structure tensor.
    root = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy)
    s = 0.5 * (jxx + jyy + root)
    vx, vy = 2 * jxy, jyy - jxx + root
    norm = torch.sqrt(vx * vx + vy * vy)
    # Where the tensor is isotropic (flat, or jxy = 0 with jxx ≥ jyy) the direction is x.
    flat = norm < 1e-12
    v = torch.cat([torch.where(flat, torch.ones_like(vx), vx), torch.where(flat, torch.zeros_like(vy), vy)], 1)
    return v / torch.where(flat, torch.ones_like(norm), norm), s


def eed_tensor(
    image: torch.Tensor, sigma: float = EED_SIGMA, contrast: float = EED_CONTRAST, alpha: float = EED_ALPHA
) -> TensorField:
    """Edge-enhancing diffusion tensor from a colour image (B,C,H,W) in [0, 1].

    v = dominant structure direction, μ₁ = 1/(1 + s/λ²) with λ = `contrast`, μ₂ = 1.
    """
    v, s = dominant_structure(image, sigma)
    mu1 = 1.0 / (1.0 + s / contrast**2)
    return tensor_from_parts(v, mu1, torch.ones_like(mu1), torch.full_like(mu1, alpha))
