"""The neuroexplicit densifier's network: a small U-Net that predicts diffusion tensors.

Following Fischer et al. (arXiv 2405.14599), the network never outputs flow: it
predicts, per pixel and per pyramid level, the parameters of the diffusion tensor
(eigenvector v, eigenvalues μ₁ μ₂, stencil parameter α), and the explicit solver
(`solver.py`) does the inpainting. Its decoder has one head per level, so each
level of the coarse-to-fine solver gets a tensor at its own resolution.

Input: reference image (3), known-mask (1) and the known flow, normalised per
sample by its mean and spread over the known pixels (2). Seeing where flow is known
and how it varies lets the network place flow edges, not just image edges; the
normalisation keeps the tensors (and so the linear solver's output) equivariant to
the flow's offset and scale, so training on small synthetic motions carries over to
large real ones. The heads predict corrections to the EED tensor of the
level's image (direction, z₁ = sqrt(s)/λ, α) and start at zero, so training starts
from the EED solution; this matters on a CPU budget, and where μ = 1/(1 + z²) would
otherwise start at z = 0, a saddle with zero gradient.

Weights are stored as safetensors with the config in the metadata; loading never
unpickles.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from raywarp.densify.solver import TensorField, downsample
from raywarp.densify.tensor_field import EED_ALPHA, EED_CONTRAST, EED_SIGMA, dominant_structure, tensor_from_parts

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "densifier.safetensors"
MIN_FLOW_SPREAD = 0.1  # px: below this, flow variation is noise, not structure


@dataclass(frozen=True)
class DensifierConfig:
    widths: tuple[int, ...] = (32, 64, 112, 176)  # one per pyramid level, fine to coarse
    eed_sigma: float = EED_SIGMA  # the EED prior the heads correct
    eed_contrast: float = EED_CONTRAST
    alpha_prior: float = EED_ALPHA
    alpha_min: float = 0.05
    alpha_max: float = 0.45


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.1)
    )


class DensifierUNet(nn.Module):
    """U-Net: (image (B,3,H,W), known (B,1,H,W), flow (B,2,H,W)) → one tensor field per level.

    `forward` returns a list of (a, b, c, alpha) tuples, finest level first, at the
    sizes of `solver.pyramid_sizes(H, W, levels)`.
    """

    def __init__(self, config: DensifierConfig = DensifierConfig()):
        super().__init__()
        self.config = config
        w = config.widths
        self.encoders = nn.ModuleList([conv_block(6, w[0])] + [conv_block(w[i - 1], w[i]) for i in range(1, len(w))])
        self.decoders = nn.ModuleList([conv_block(w[i + 1] + w[i], w[i]) for i in range(len(w) - 1)])
        self.heads = nn.ModuleList([nn.Conv2d(wi, 5, 1) for wi in w])
        for head in self.heads:  # zero heads = homogeneous diffusion at the start
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def levels(self) -> int:
        return len(self.config.widths)

    def forward(self, image: torch.Tensor, known: torch.Tensor, flow: torch.Tensor) -> list[TensorField]:
        x = torch.cat([image, known, known * normalise_flow(flow, known)], 1)
        skips = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = F.avg_pool2d(x, 2, ceil_mode=True)
            x = enc(x)
            skips.append(x)
        fields = [self.tensor_field(self.heads[-1](x), image, len(skips) - 1)]
        for i in reversed(range(self.levels - 1)):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.decoders[i](torch.cat([x, skips[i]], 1))
            fields.append(self.tensor_field(self.heads[i](x), image, i))
        return fields[::-1]

    def tensor_field(self, out: torch.Tensor, image: torch.Tensor, level: int) -> TensorField:
        """Head output (B,5,H,W) at `level` → (a, b, c, alpha), as corrections to EED.

        v = normalise(v_EED + o₀₁), μ₁ = 1/(1 + (sqrt(s)/λ + o₂)²), μ₂ = 1/(1 + (0.1 + o₃)²),
        α = α_min + (α_max − α_min) σ(logit(prior) + o₄), with s the EED structure eigenvalue.
        """
        cfg = self.config
        for _ in range(level):
            image = downsample(image)
        v_eed, s = dominant_structure(image, cfg.eed_sigma)
        v = v_eed + out[:, :2]
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)
        mu1 = 1 / (1 + (s.sqrt() / cfg.eed_contrast + out[:, 2:3]) ** 2)
        mu2 = 1 / (1 + (0.1 + out[:, 3:4]) ** 2)  # offset: no zero-gradient saddle at the start
        prior = (cfg.alpha_prior - cfg.alpha_min) / (cfg.alpha_max - cfg.alpha_min)
        alpha = cfg.alpha_min + (cfg.alpha_max - cfg.alpha_min) * torch.sigmoid(out[:, 4:5] + math.log(prior / (1 - prior)))
        return tensor_from_parts(v, mu1, mu2, alpha)


def normalise_flow(flow: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """(flow − mean) / spread over known pixels, per batch item; (B,2,H,W) → (B,2,H,W)."""
    count = known.sum((1, 2, 3), keepdim=True).clamp_min(1)
    mean = (flow * known).sum((2, 3), keepdim=True) / count
    centred = (flow - mean) * known
    spread = (centred.square().sum((1, 2, 3), keepdim=True) / (2 * count)).sqrt()
    return centred / spread.clamp_min(MIN_FLOW_SPREAD)


def save_densifier(model: DensifierUNet, path: str | Path, extra: dict | None = None) -> None:
    """Write weights as safetensors with the config (and `extra` notes) in the metadata."""
    from safetensors.torch import save_file

    meta = {"config": json.dumps(asdict(model.config))}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def load_densifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DensifierUNet:
    """Load a densifier from safetensors (default: the weights shipped in the package)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"densifier weights not found at {path}; train them with jobs/train_densifier.py")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    cfg = json.loads(meta.get("config", "{}"))
    cfg = DensifierConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    model = DensifierUNet(cfg)
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval()
