"""Tests for raywarp.metrics against hand-computed values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import structural_similarity

from raywarp import flow, metrics

ASTRONAUT = data.astronaut().astype(np.float32) / 255
COFFEE = data.coffee().astype(np.float32) / 255


def _t(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) numpy -> (1, 3, H, W) torch."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def const_flow(dx: float, dy: float, h: int, w: int, b: int = 1) -> torch.Tensor:
    f = torch.zeros(b, 2, h, w)
    f[:, 0], f[:, 1] = dx, dy
    return f


# --------------------------------------------------------------------------
# epe


def test_epe_of_known_vectors():
    gt = torch.zeros(1, 2, 4, 5)
    f = const_flow(3, 4, 4, 5)
    assert float(metrics.epe(f, gt)) == pytest.approx(5.0)
    # Half the pixels off by (3, 4), half by (0, 1): mean 3; masked to the first half: 5.
    f[..., 2:, :] = 0
    f[:, 1, 2:, :] = 1
    assert float(metrics.epe(f, gt)) == pytest.approx(3.0)
    mask = torch.zeros(1, 1, 4, 5)
    mask[..., :2, :] = 1
    assert float(metrics.epe(f, gt, mask)) == pytest.approx(5.0)
    assert float(metrics.epe(f, gt, mask.bool())) == pytest.approx(5.0)


def test_epe_numpy_and_bad_input():
    v = metrics.epe(np.full((2, 3, 3), 1.0, np.float32), np.zeros((2, 3, 3), np.float32))
    assert isinstance(v, float) and v == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="^mask: selects no pixels"):
        metrics.epe(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="^gt: shape"):
        metrics.epe(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="^flow: expected 2 channels"):
        metrics.epe(torch.zeros(1, 3, 3, 3), torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match="^gt: .*NaN"):
        metrics.epe(torch.zeros(1, 2, 3, 3), torch.full((1, 2, 3, 3), float("nan")))


# --------------------------------------------------------------------------
# psnr


def test_psnr_of_constant_offset():
    x = _t(ASTRONAUT[:37, :53]).clamp(0, 0.9)
    assert float(metrics.psnr(x, x + 0.1)) == pytest.approx(20.0, abs=1e-4)
    assert float(metrics.psnr(x * 255, x * 255 + 25.5, data_range=255)) == pytest.approx(20.0, abs=1e-4)


def test_psnr_per_item_and_mean():
    x = _t(COFFEE[:32, :48]).clamp(0, 0.9).repeat(2, 1, 1, 1)
    y = x.clone()
    y[0] += 0.1  # 20 dB
    y[1] += 0.01  # 40 dB
    per = metrics.psnr(x, y, reduction="none")
    assert per.shape == (2,)
    torch.testing.assert_close(per, torch.tensor([20.0, 40.0]), atol=1e-3, rtol=0)
    assert float(metrics.psnr(x, y)) == pytest.approx(30.0, abs=1e-3)
    assert math.isinf(float(metrics.psnr(x, x)))


def test_psnr_bad_input():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="^y: shape"):
        metrics.psnr(x, torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="^data_range"):
        metrics.psnr(x, x, data_range=0)
    with pytest.raises(ValueError, match="^reduction"):
        metrics.psnr(x, x, reduction="sum")


# --------------------------------------------------------------------------
# ssim


def _skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    return structural_similarity(
        x.double().numpy(), y.double().numpy(), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1, channel_axis=0,
    )


def test_ssim_identical_is_one():
    x = _t(ASTRONAUT[100:164, 200:280])
    assert float(metrics.ssim(x, x)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("size", [(37, 53), (64, 96), (11, 11)])
def test_ssim_matches_skimage(size):
    h, w = size
    rng = np.random.default_rng(0)
    x = _t(ASTRONAUT[150 : 150 + h, 180 : 180 + w])
    noisy = (x + torch.from_numpy(rng.normal(0, 0.05, x.shape).astype(np.float32))).clamp(0, 1)
    shifted = _t(ASTRONAUT[152 : 152 + h, 181 : 181 + w])
    other = _t(COFFEE[50 : 50 + h, 60 : 60 + w])
    ys = torch.cat([noisy, shifted, other, (x * 0.8 + 0.1)])
    xs = x.expand_as(ys)
    got = metrics.ssim(xs, ys, reduction="none")
    assert got.shape == (4,)
    want = torch.tensor([_skimage_ssim(xs[i], ys[i]) for i in range(4)], dtype=torch.float32)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert float(metrics.ssim(xs, ys)) == pytest.approx(float(want.mean()), abs=1e-4)
    assert float(got[0]) < 1


def test_ssim_data_range_and_numpy():
    x = ASTRONAUT[:40, :40].transpose(2, 0, 1).copy()
    y = COFFEE[:40, :40].transpose(2, 0, 1).copy()
    v = metrics.ssim(x, y)
    assert isinstance(v, float)
    assert metrics.ssim(x * 255, y * 255, data_range=255) == pytest.approx(v, abs=1e-5)


def test_ssim_too_small_raises():
    with pytest.raises(ValueError, match="^x: SSIM needs"):
        metrics.ssim(torch.rand(1, 3, 10, 30), torch.rand(1, 3, 10, 30))


# --------------------------------------------------------------------------
# warping error


def rolled_video(t: int, dx: int, dy: int, h: int = 48, w: int = 64) -> torch.Tensor:
    """(T, 3, H, W): frame t is frame 0 rolled by t * (dx, dy); the wrapped-around
    band is wrong content, so only a correct mask gives zero error."""
    base = _t(ASTRONAUT[40 : 40 + h, 160 : 160 + w])[0]
    return torch.stack([torch.roll(base, (k * dy, k * dx), (1, 2)) for k in range(t)])


def test_warping_error_zero_for_perfectly_warped_video():
    t, dx, dy, h, w = 4, 3, -2, 48, 64
    frames = rolled_video(t, dx, dy, h, w)
    fwd = const_flow(dx, dy, h, w, t - 1)
    bwd = const_flow(-dx, -dy, h, w, t - 1)
    per = metrics.warping_error_per_pair(frames, fwd, bwd)
    assert per.shape == (t - 1,)
    assert float(per.abs().max()) < 1e-9
    assert float(metrics.warping_error(frames, fwd, bwd)) < 1e-9
    # Sanity: without the mask, the wrapped band would dominate.
    assert float((flow.warp(frames[1:], fwd) - frames[:-1]).pow(2).mean()) > 1e-4


def test_warping_error_constant_brightness_change():
    # Static video, +0.1 per frame: M is all ones and E_t = 0.1^2.
    base = _t(COFFEE[100:137, 200:253])[0].clamp(0, 0.6)
    frames = torch.stack([base + 0.1 * k for k in range(4)])
    zero = torch.zeros(3, 2, 37, 53)
    per = metrics.warping_error_per_pair(frames, zero, zero)
    torch.testing.assert_close(per, torch.full((3,), 0.01), atol=1e-6, rtol=0)
    assert float(metrics.warping_error(frames, zero, zero)) == pytest.approx(0.01, abs=1e-6)


def test_warping_error_brightness_change_under_motion():
    # Same +0.1 step on a panning video: the out-of-frame band is masked and
    # every remaining pixel still has error 0.1^2.
    frames = rolled_video(3, 2, 1).clamp(0, 0.7)
    frames = frames + 0.1 * torch.arange(3.0).view(3, 1, 1, 1)
    fwd, bwd = const_flow(2, 1, 48, 64, 2), const_flow(-2, -1, 48, 64, 2)
    assert float(metrics.warping_error(frames, fwd, bwd)) == pytest.approx(0.01, abs=1e-5)


def test_warping_error_is_a_channel_mean_per_pair():
    # Pair 1: +0.3 in the red channel only -> 0.09 / 3; pair 2: +0.2 in all -> 0.04.
    base = _t(ASTRONAUT[200:232, 200:240])[0].clamp(0, 0.5)
    f1 = base.clone()
    f1[0] += 0.3
    f2 = f1 + 0.2
    zero = torch.zeros(2, 2, 32, 40)
    per = metrics.warping_error_per_pair(torch.stack([base, f1, f2]), zero, zero)
    torch.testing.assert_close(per, torch.tensor([0.03, 0.04]), atol=1e-6, rtol=0)
    assert float(metrics.warping_error(torch.stack([base, f1, f2]), zero, zero)) == pytest.approx(0.035, abs=1e-6)


def test_warping_error_ignores_occluded_region():
    # Frame 1 differs by +0.1 everywhere and by +0.4 inside R; the backward
    # flow is inconsistent on R, so R is masked out and E = 0.01.
    h, w = 37, 53
    base = _t(ASTRONAUT[300 : 300 + h, 100 : 100 + w])[0].clamp(0, 0.5)
    f1 = base + 0.1
    f1[:, 10:20, 10:30] += 0.3
    fwd = torch.zeros(1, 2, h, w)
    bwd = torch.zeros(1, 2, h, w)
    bwd[:, 0, 10:20, 10:30] = 10.0  # |0 + 10|^2 = 100 > 0.01 * 100 + 0.5
    assert float(metrics.warping_error(torch.stack([base, f1]), fwd, bwd)) == pytest.approx(0.01, abs=1e-6)


def test_warping_error_numpy_and_bad_input():
    frames = np.zeros((3, 3, 16, 16), np.float32)
    flows = np.zeros((2, 2, 16, 16), np.float32)
    assert metrics.warping_error(frames, flows, flows) == 0.0
    assert isinstance(metrics.warping_error_per_pair(frames, flows, flows), np.ndarray)
    with pytest.raises(ValueError, match="^flows_fwd: expected shape \\(2, 2, 16, 16\\)"):
        metrics.warping_error(frames, flows[:1], flows)
    with pytest.raises(ValueError, match="^flows_bwd"):
        metrics.warping_error(frames, flows, flows[..., :15])
    with pytest.raises(ValueError, match="^frames: need at least 2"):
        metrics.warping_error(frames[:1], flows[:0], flows[:0])
    with pytest.raises(ValueError, match="^frames: expected 3 channels"):
        metrics.warping_error(frames[:, :1], flows, flows)
