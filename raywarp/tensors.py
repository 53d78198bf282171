"""Argument checking and numpy/torch conversion at the edges of the public API.

Every public numerical function in raywarp takes torch tensors shaped
(B, C, H, W) and also accepts numpy arrays (converted here, converted back by the
caller with `to_like`). Checks raise ValueError naming the argument, so bad input
never turns into a silent wrong answer deeper in the math.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # by their usual names

# Off inside loops over values already validated (`unchecked`): the NaN scan reads a
# value back from the device, a host sync per call on an accelerator.
_SCAN_FINITE = contextvars.ContextVar("scan_finite", default=True)


@contextlib.contextmanager
def unchecked():
    """Skip `as_batch`'s NaN/inf scan within the block (shape checks stay)."""
    token = _SCAN_FINITE.set(False)
    try:
        yield
    finally:
        _SCAN_FINITE.reset(token)


def as_batch(x, name: str, channels: int | None = None, allow_nan: bool = False) -> torch.Tensor:
    """Return `x` as a float tensor of shape (B, C, H, W).

    Accepts torch tensors or numpy arrays shaped (B, C, H, W) or (C, H, W)
    (a batch of one is added). With `channels`, C must equal it. Raises
    ValueError naming `name` for a wrong rank, wrong channel count, an empty
    dimension or (unless `allow_nan`) NaN/inf values.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name}: expected shape (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    if min(x.shape) == 0:
        raise ValueError(f"{name}: empty tensor of shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if not allow_nan and _SCAN_FINITE.get() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or inf values")
    return x


def check_same_size(**tensors: torch.Tensor) -> None:
    """Raise ValueError unless all tensors share batch size and (H, W)."""
    items = list(tensors.items())
    ref_name, ref = items[0]
    for name, t in items[1:]:
        if t.shape[0] != ref.shape[0] or t.shape[-2:] != ref.shape[-2:]:
            raise ValueError(
                f"{name}: shape {tuple(t.shape)} does not match {ref_name} {tuple(ref.shape)} "
                "(batch and height/width must agree)"
            )


def to_like(y: torch.Tensor, like) -> torch.Tensor | np.ndarray:
    """Return `y` as numpy if `like` was numpy (dropping an added batch dim), else as is."""
    if isinstance(like, np.ndarray):
        out = y.detach().cpu().numpy()
        return out[0] if like.ndim == 3 else out
    return y


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """Video frames (T, H, W, 3) uint8 → (T, 3, H, W) float in [0, 1]."""
    # np.require copies only a read-only (e.g. Ray object store) or strided array
    return torch.from_numpy(np.require(frames, requirements=["C", "W"])).permute(0, 3, 1, 2).float() / 255


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] → video frames (T, H, W, 3) uint8 (clamped, rounded)."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
