"""Flow densification: fill optical flow where it is unknown, guided by the image.

Occlusions (from the forward–backward check), inpainting holes and sparse samples
leave flow unknown; `densify` fills it by diffusion inpainting with one shared
explicit solver (`solver.py`) and one of three diffusion tensors
(`tensor_field.py`, `network.py`):

    method="laplace"        homogeneous diffusion
    method="eed"            edge-enhancing diffusion steered by the image structure
    method="neuroexplicit"  tensors predicted by a small U-Net (shipped weights); the
                            fills of the frame and its left-right mirror image averaged
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from raywarp.densify.network import DensifierUNet, load_densifier
from raywarp.densify.solver import pyramid_inpaint, pyramid_sizes
from raywarp.densify.tensor_field import eed_tensor, homogeneous_tensor
from raywarp.tensors import as_batch, check_same_size, to_like

METHODS = ("laplace", "eed", "neuroexplicit")
DEFAULT_STEPS = (5, 15, 30, 45)  # per level, coarse to fine (the paper's 95 in total)
# Larger frames get extra coarse levels until the coarsest one's longer side is at most
# this: a hole must shrink to a few pixels somewhere for a few steps to fill it (the
# training crops, 96² over 4 levels, end at 12 px).
COARSEST_SIDE = 16
# Mirror images (flipped dims of a (B,C,H,W) tensor) the neuroexplicit solution is
# averaged over: the frame and its left-right mirror. Scenes and camera motion are as
# likely mirrored left-right, not up-down; adding the up-down mirrors measured no better
# on the real pair at twice the cost.
MIRRORS = ((), (-1,))


@functools.lru_cache(maxsize=4)
def shipped_model(device: str) -> DensifierUNet:
    return load_densifier(device=device).requires_grad_(False)  # inference: no autograd graph


def network_fields(net: DensifierUNet, image: torch.Tensor, known: torch.Tensor, flow: torch.Tensor):
    """The solver's tensor function for a densifier network: its fields on its own levels,
    homogeneous diffusion on any coarser one (there it only carries the surrounding motion
    into the middle of large holes). Training and inference share it."""
    fields = net(image, known, flow)
    return lambda level, img: fields[level] if level < len(fields) else homogeneous_tensor(img)


def mirror(x: torch.Tensor, dims: tuple[int, ...], flow: bool = False) -> torch.Tensor:
    """x (B,C,H,W) flipped along `dims` (-1: left-right, -2: up-down); for a flow (C = 2)
    also the sign of each mirrored component. Its own inverse."""
    if not dims:
        return x
    x = x.flip(dims)
    if flow:
        sign = torch.tensor([-1.0 if -1 in dims else 1.0, -1.0 if -2 in dims else 1.0], dtype=x.dtype, device=x.device)
        x = x * sign.view(1, 2, 1, 1)
    return x


def level_steps(height: int, width: int, steps: Sequence[int], coarsest_side: int | None = COARSEST_SIDE) -> list[int]:
    """Steps per pyramid level, coarsest first: `steps` for the finest len(steps) levels,
    preceded by extra levels of steps[0] each until the coarsest level's longer side is
    at most `coarsest_side` (None: exactly `steps`)."""
    steps = [int(s) for s in steps]
    while coarsest_side is not None and max(pyramid_sizes(height, width, len(steps))[-1]) > coarsest_side:
        steps.insert(0, steps[0])
    return steps


def densify(
    flow,
    mask,
    image,
    method: str = "neuroexplicit",
    steps: Sequence[int] = DEFAULT_STEPS,
    model: DensifierUNet | None = None,
    fsi: bool = True,
    coarsest_side: int | None = COARSEST_SIDE,
    mirror_average: bool = True,
):
    """Fill `flow` where `mask` is 0.

    flow: (B,2,H,W) pixels (values where mask = 0 are ignored and may be NaN);
    mask: (B,1,H,W), 1 = known, 0 = fill; image: (B,3,H,W) in [0, 1], the frame
    the flow starts from. Numpy arrays, or (C,H,W) without the batch, also work.
    steps: solver steps per pyramid level, coarsest first, for the finest len(steps)
    levels (the network needs exactly its own number, 4); frames larger than
    `coarsest_side` × 2^(len(steps)−1) get extra coarser levels (see `level_steps`;
    None: none); the network's fields stop at its own coarsest level, homogeneous
    diffusion runs below it (there it only carries the surrounding motion into the
    middle of large holes).
    model: a `DensifierUNet` for method="neuroexplicit" (default: shipped weights).
    fsi: Fast Semi-Iterative acceleration (False: plain explicit steps).
    mirror_average: for method="neuroexplicit", solve for the frame and its left-right
    mirror image (`MIRRORS`, one batch) and average the solutions, mirrored back: the
    network is not exactly equivariant to mirroring, the average is, and it is more
    accurate, at twice the cost (False: one solve). Laplace and EED are equivariant already.

    Returns the dense flow, known pixels unchanged. A mask with no known pixel in
    some batch item raises ValueError; an all-known mask returns the flow as is.
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown densification method {method!r}; choose one of {METHODS}")
    like = flow
    flow_t = as_batch(flow, "flow", channels=2, allow_nan=True)
    mask_t = as_batch(mask, "mask", channels=1)
    image_t = as_batch(image, "image", channels=3)
    check_same_size(flow=flow_t, mask=mask_t, image=image_t)
    if bool(((mask_t < 0) | (mask_t > 1)).any()):
        raise ValueError("mask: values must lie in [0, 1] (1 = known flow, 0 = to fill)")
    known = (mask_t > 0.5).to(flow_t.dtype)
    if not bool(torch.isfinite(flow_t).all(1, keepdim=True)[known.bool()].all()):
        raise ValueError("flow: NaN or inf where mask marks the flow as known")
    empty = (known.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"mask: no known flow in batch item(s) {empty}; nothing to densify from")
    if len(steps) < 1 or any(int(s) < 0 for s in steps):
        raise ValueError(f"steps: need one non-negative step count per level, got {tuple(steps)}")
    if coarsest_side is not None and coarsest_side < 1:
        raise ValueError(f"coarsest_side: need a side of at least 1 px or None, got {coarsest_side}")
    flow_t = torch.where(known.bool(), flow_t, torch.zeros_like(flow_t))
    if bool(known.all()):
        return to_like(flow_t, like)

    image_t = image_t.to(flow_t)
    all_steps = level_steps(*flow_t.shape[-2:], steps, coarsest_side)
    if method != "neuroexplicit":
        tensor = homogeneous_tensor if method == "laplace" else eed_tensor
        out = pyramid_inpaint(flow_t, known, image_t, lambda level, img: tensor(img), steps=all_steps, fsi=fsi)
        return to_like(out, like)

    net = model if model is not None else shipped_model(str(flow_t.device))
    if len(steps) != net.levels:
        raise ValueError(f"steps: the neuroexplicit network has {net.levels} levels, got {len(steps)} step counts")
    mirrors = MIRRORS if mirror_average else MIRRORS[:1]
    flow_m = torch.cat([mirror(flow_t, d, flow=True) for d in mirrors])
    known_m, image_m = (torch.cat([mirror(x, d) for d in mirrors]) for x in (known, image_t))
    field_fn = network_fields(net, image_m, known_m, flow_m)
    out = pyramid_inpaint(flow_m, known_m, image_m, field_fn, steps=all_steps, fsi=fsi)
    out = torch.stack([mirror(o, d, flow=True) for o, d in zip(out.chunk(len(mirrors)), mirrors)]).mean(0)
    return to_like(out, like)
