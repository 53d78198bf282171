"""Tests for raywarp.flow on real photographs with exactly known motion."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
import torch
from skimage import data

from raywarp import flow, inverse, synthetic
from raywarp.metrics import epe

ASTRONAUT = data.astronaut().astype(np.float32) / 255  # (512, 512, 3)
COFFEE = data.coffee().astype(np.float32) / 255  # (400, 600, 3)
# A textured crop origin (face and hair): flow is well defined everywhere.
Y0, X0 = 40, 160


def _t(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) numpy -> (1, 3, H, W) torch."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def shifted_pair(dx: int, dy: int, h: int = 96, w: int = 128, img=ASTRONAUT, y0=Y0, x0=X0):
    """Two crops where the content moves by (dx, dy): b(p + d) = a(p), so flow a->b = d."""
    a = img[y0 : y0 + h, x0 : x0 + w]
    b = img[y0 - dy : y0 - dy + h, x0 - dx : x0 - dx + w]
    return _t(a), _t(b)


def const_flow(dx: float, dy: float, h: int, w: int, b: int = 1) -> torch.Tensor:
    f = torch.zeros(b, 2, h, w)
    f[:, 0], f[:, 1] = dx, dy
    return f


def interior(x: torch.Tensor, m: int = 8) -> torch.Tensor:
    return x[..., m:-m, m:-m]


# --------------------------------------------------------------------------
# estimate


@pytest.mark.parametrize("method", ["dis", "farneback"])
@pytest.mark.parametrize("d", [(3, -2), (-5, 4), (1, 1)])
def test_estimate_recovers_translation(method, d):
    a, b = shifted_pair(*d)
    f = flow.estimate(a, b, method=method)
    assert f.shape == (1, 2, 96, 128) and f.dtype == torch.float32
    gt = const_flow(*d, 96, 128)
    assert float(epe(interior(f), interior(gt))) < 0.5


@pytest.mark.parametrize("preset,tol", [("ultrafast", 1.0), ("fast", 0.5), ("medium", 0.25)])
def test_dis_presets_recover_translation_on_coffee(preset, tol):
    # Faster presets search coarser patch grids with fewer iterations, hence the looser bounds.
    a, b = shifted_pair(3, -2, img=COFFEE, y0=120, x0=200)
    f = flow.estimate(a, b, method="dis", preset=preset)
    assert float(epe(interior(f, 16), interior(const_flow(3, -2, 96, 128), 16))) < tol


@pytest.mark.parametrize("method", ["dis", "farneback"])
@pytest.mark.parametrize("angle,scale,shift", [(0.0, 1.0, (0.5, 0.25)), (1.0, 1.02, (1.5, -0.75))])
def test_estimate_recovers_subpixel_affine_motion(method, angle, scale, shift):
    # b = a moved by an affine map q = A p, so the true flow is A p - p.
    h, w = 96, 128
    cx, cy = X0 + w / 2, Y0 + h / 2
    A = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    A[:, 2] += shift
    moved = cv2.warpAffine(ASTRONAUT, A, ASTRONAUT.shape[1::-1], flags=cv2.INTER_CUBIC)
    a = _t(ASTRONAUT[Y0 : Y0 + h, X0 : X0 + w])
    b = _t(np.clip(moved[Y0 : Y0 + h, X0 : X0 + w], 0, 1))
    ys, xs = np.mgrid[Y0 : Y0 + h, X0 : X0 + w].astype(np.float64)
    gt = np.stack([A[0, 0] * xs + A[0, 1] * ys + A[0, 2] - xs, A[1, 0] * xs + A[1, 1] * ys + A[1, 2] - ys])
    gt = torch.from_numpy(gt[None]).float()
    f = flow.estimate(a, b, method=method)
    assert float(epe(interior(f), interior(gt))) < 0.3


def test_estimate_batch_items_are_independent():
    a1, b1 = shifted_pair(3, -2)
    a2, b2 = shifted_pair(-2, 1)
    f = flow.estimate(torch.cat([a1, a2]), torch.cat([b1, b2]))
    assert f.shape == (2, 2, 96, 128)
    assert float(epe(interior(f[:1]), interior(const_flow(3, -2, 96, 128)))) < 0.5
    assert float(epe(interior(f[1:]), interior(const_flow(-2, 1, 96, 128)))) < 0.5


def test_estimate_numpy_in_numpy_out():
    a, b = shifted_pair(2, 1)
    f = flow.estimate(a[0].numpy(), b[0].numpy())
    assert isinstance(f, np.ndarray) and f.shape == (2, 96, 128)
    assert float((interior(torch.from_numpy(f)) - torch.tensor([2.0, 1.0]).view(2, 1, 1)).abs().mean()) < 0.5


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_estimate_odd_size(method):
    a, b = shifted_pair(1, 1, h=37, w=53)
    f = flow.estimate(a, b, method=method)
    assert f.shape == (1, 2, 37, 53)
    assert float(epe(interior(f, 6), interior(const_flow(1, 1, 37, 53), 6))) < 0.5


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda a, b: flow.estimate(a[:, :1], b[:, :1]), r"^a: expected 3 channels"),
        (lambda a, b: flow.estimate(a, b[..., :-1]), r"^b: shape"),
        (lambda a, b: flow.estimate(a, torch.cat([b, b])), r"^b: shape"),
        (lambda a, b: flow.estimate(a, b.clone().index_fill_(2, torch.tensor([3]), float("nan"))), r"^b: .*NaN"),
        (lambda a, b: flow.estimate(a * 255, b * 255), r"^a: expected RGB values in \[0, 1\]"),
        (lambda a, b: flow.estimate(a, b, method="lucas"), r"^method: .*dis, farneback"),
        (lambda a, b: flow.estimate(a, b, preset="slow"), r"^preset: .*ultrafast, fast, medium"),
        (lambda a, b: flow.estimate(a[..., :8, :8], b[..., :8, :8]), r"^a: DIS needs"),
        (lambda a, b: flow.estimate(a, b, detail=0.5), r"^detail: .*at least 1"),
        (lambda a, b: flow.estimate(a, b, dis_level=-1), r"^dis_level: "),
        (lambda a, b: flow.estimate(a, b, blur=-0.5), r"^blur: "),
    ],
)
def test_estimate_bad_input_raises_value_error(make, match):
    a, b = shifted_pair(1, 1, h=32, w=32)
    with pytest.raises(ValueError, match=match):
        make(a, b)


# --------------------------------------------------------------------------
# warp


@pytest.mark.parametrize("size", [(37, 53), (64, 64)])
@pytest.mark.parametrize("d", [(2, -3), (-1, 0), (0, 4)])
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_warp_integer_flow_equals_roll_in_interior(size, d, padding_mode, mode):
    h, w = size
    x = _t(ASTRONAUT[100 : 100 + h, 200 : 200 + w])
    dx, dy = d
    out = flow.warp(x, const_flow(dx, dy, h, w), padding_mode=padding_mode, mode=mode)
    # out(p) = x(p + d)  <=>  out = roll(x, -d)
    ref = torch.roll(x, shifts=(-dy, -dx), dims=(2, 3))
    ys = slice(max(0, -dy), h - max(0, dy))
    xs = slice(max(0, -dx), w - max(0, dx))
    torch.testing.assert_close(out[..., ys, xs], ref[..., ys, xs], atol=1e-5, rtol=0)


def test_warp_zero_flow_is_identity_and_any_channels():
    x = torch.rand(2, 5, 37, 53)
    torch.testing.assert_close(flow.warp(x, torch.zeros(2, 2, 37, 53)), x, atol=1e-5, rtol=0)


def test_warp_half_pixel_is_bilinear_average():
    x = _t(COFFEE[100:131, 200:241])
    out = flow.warp(x, const_flow(0.5, 0, 31, 41))
    ref = 0.5 * (x[..., :-1] + x[..., 1:])
    torch.testing.assert_close(out[..., :-1], ref, atol=1e-5, rtol=0)


def test_bicubic_warp_keeps_more_detail_than_bilinear():
    """A half-pixel round trip: bilinear averages neighbours twice, bicubic barely blurs."""
    x = _t(COFFEE[100:164, 200:264])
    errors = {}
    for mode in ("bilinear", "bicubic"):
        there = flow.warp(x, const_flow(0.5, 0.5, 64, 64), mode=mode)
        back = flow.warp(there, const_flow(-0.5, -0.5, 64, 64), mode=mode)
        errors[mode] = float((back - x)[..., 4:-4, 4:-4].abs().mean())
    assert errors["bicubic"] < 0.8 * errors["bilinear"], errors  # measured: 0.0056 vs 0.0079
    with pytest.raises(ValueError, match="interpolation"):
        flow.warp(x, const_flow(0, 0, 64, 64), mode="nearest")


def test_warp_padding_modes_outside_frame():
    x = _t(ASTRONAUT[:20, :30])
    f = const_flow(3, 0, 20, 30)
    zeros = flow.warp(x, f, padding_mode="zeros")
    border = flow.warp(x, f, padding_mode="border")
    # columns 27..29 sample at x >= 30 > W - 1 (1e-5: float32 rounding of the grid)
    torch.testing.assert_close(zeros[..., -3:], torch.zeros(1, 3, 20, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(border[..., -3:], x[..., -1:].expand(-1, -1, -1, 3), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="^padding_mode"):
        flow.warp(x, f, padding_mode="wrap")


def test_warp_is_differentiable_in_image_and_flow():
    x = _t(ASTRONAUT[Y0 : Y0 + 33, X0 : X0 + 47]).clone().requires_grad_(True)
    f = const_flow(0.3, -0.6, 33, 47).requires_grad_(True)
    out = flow.warp(x, f)
    (out - 0.5).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert f.grad is not None and f.grad.abs().sum() > 0 and torch.isfinite(f.grad).all()


def test_warp_numpy_and_bad_input():
    x = ASTRONAUT[:16, :24].transpose(2, 0, 1).copy()
    out = flow.warp(x, np.zeros((2, 16, 24), np.float32))
    assert isinstance(out, np.ndarray) and out.shape == (3, 16, 24)
    np.testing.assert_allclose(out, x, atol=1e-5)
    nan_flow = torch.zeros(1, 2, 16, 24)
    nan_flow[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="^flow: .*NaN"):
        flow.warp(torch.from_numpy(x)[None], nan_flow)
    with pytest.raises(ValueError, match="^flow: shape"):
        flow.warp(torch.from_numpy(x)[None], torch.zeros(1, 2, 16, 25))
    with pytest.raises(ValueError, match="^flow: expected 2 channels"):
        flow.warp(torch.from_numpy(x)[None], torch.zeros(1, 3, 16, 24))


# --------------------------------------------------------------------------
# in_frame


def test_in_frame_marks_band_leaving_the_image():
    m = flow.in_frame(const_flow(3, -2, 37, 53))
    assert m.shape == (1, 1, 37, 53)
    expected = torch.ones(37, 53)
    expected[:, -3:] = 0  # x + 3 > 52
    expected[:2, :] = 0  # y - 2 < 0
    assert torch.equal(m[0, 0], expected)
    assert torch.all(flow.in_frame(const_flow(0.0, 0.0, 5, 7)) == 1)


# --------------------------------------------------------------------------
# masks


def test_consistency_mask_marks_occlusion_and_out_of_frame():
    # Camera pans right by 2 px; a square in frame 0 at rows 10:20, cols 10:20
    # moves right by 6 px, covering background in frame 1.
    h, w = 37, 53
    fwd = const_flow(2, 0, h, w)
    fwd[:, 0, 10:20, 10:20] = 6
    bwd = const_flow(-2, 0, h, w)
    bwd[:, 0, 10:20, 16:26] = -6
    m = flow.consistency_mask(fwd, bwd)
    assert m.shape == (1, 1, h, w) and m.dtype == torch.float32
    expected = torch.ones(h, w)
    expected[:, -2:] = 0  # leaves the image
    expected[10:20, 20:24] = 0  # background hidden behind the square in frame 1
    assert torch.equal(m[0, 0], expected)


def test_consistency_mask_on_estimated_flows():
    a, b = shifted_pair(3, 0)
    m = flow.consistency_mask(flow.estimate(a, b), flow.estimate(b, a))
    assert torch.all(m[..., -3:] == 0)
    assert float(m[..., :-8].mean()) > 0.95


def test_consistency_mask_bad_input():
    with pytest.raises(ValueError, match="^bwd: shape"):
        flow.consistency_mask(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="^fwd: expected 2 channels"):
        flow.consistency_mask(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 8, 8))


def test_trusted_matches_keep_clear_of_the_holes_in_both_frames():
    h, w, m = 40, 60, flow.HOLE_MARGIN
    observed = torch.ones(1, 1, h, w)
    observed[..., 10:20, 20:30] = 0  # a static hole
    fwd = const_flow(6, 0, h, w)  # the scene moves right by 6 px
    trusted = flow.trusted_matches(fwd, observed, observed)[0, 0]
    expected = torch.ones(h, w)
    expected[:, w - 6 :] = 0  # lands outside frame 1
    # starts within m px of the hole (columns 20 − m … 30 + m) or lands there (6 px to the left)
    expected[10 - m : 20 + m, 20 - m - 6 : 30 + m] = 0
    assert torch.equal(trusted, expected)


def test_trusted_matches_without_holes_or_with_nothing_left():
    fwd = const_flow(3, 0, 16, 16, b=2)
    assert torch.equal(flow.trusted_matches(fwd, torch.ones(2, 1, 16, 16), torch.ones(2, 1, 16, 16)), torch.ones(2, 1, 16, 16))
    speckled = torch.ones(2, 1, 16, 16)
    speckled[0, :, ::4, ::4] = 0  # holes everywhere: nothing is clear of them, the observed pixels stand
    speckled[1, :, :4, :4] = 0
    trusted = flow.trusted_matches(fwd, speckled, speckled)
    assert torch.equal(trusted[0], speckled[0])
    assert trusted[1].sum() > 0 and not trusted[1, 0, :8, :8].any()


def test_flow_around_a_static_hole_over_a_translating_scene():
    # A logo over a pan: the hole matched to itself is consistent both ways, so only
    # keeping matches clear of the hole gets the pan right around (and, densified, in) it.
    size = (64, 64)
    video, true = synthetic.affine_video("coffee", 4, size, synthetic.affine_motion(size, shift=(4.0, 0.0)))
    op = inverse.Inpainting(inverse.parse_mask("rect:0.35,0.3,0.65,0.6", size, 4))
    y = op.degrade(video)
    fwd, bwd = flow.restoration_flows(op.baseline(y), op.known(y))
    assert fwd.shape == bwd.shape == (3, 2, 64, 64)
    assert float(epe(fwd, true)) < 0.2


def test_motion_boundary_fires_at_discontinuity_only():
    h, w = 37, 53
    f = const_flow(1.0, 0.5, h, w)
    f[:, 0, :, 20:] = 4.0
    mb = flow.motion_boundary(f)
    assert mb.shape == (1, 1, h, w)
    expected = torch.zeros(h, w)
    expected[:, 19] = 1  # forward difference between columns 19 and 20
    assert torch.equal(mb[0, 0], expected)


def test_motion_boundary_silent_on_constant_and_smooth_flow():
    assert torch.all(flow.motion_boundary(const_flow(7.0, -3.0, 37, 53)) == 0)
    # A slow zoom: gradient 0.02 px/px is below 0.01 |w|^2 + 0.002 everywhere.
    ys, xs = torch.meshgrid(torch.arange(37.0), torch.arange(53.0), indexing="ij")
    zoom = 0.02 * torch.stack([xs - 26, ys - 18])[None]
    assert torch.all(flow.motion_boundary(zoom) == 0)


# --------------------------------------------------------------------------
# detail: how far down DIS's pyramid goes, on frames blurred how much


@pytest.mark.parametrize("detail,level,sigma", [(1, 0, 0.0), (2, 0, 0.5), (4, 1, 1.0), (8, 2, 2.0)])
def test_dis_level_and_blur_follow_the_detail(detail, level, sigma):
    assert flow.dis_finest_scale(detail) == level
    assert flow.antialias_sigma(detail) == sigma


def _coffee_video(motion):
    size = (64, 64)
    return synthetic.affine_video("coffee", 2, size, synthetic.affine_motion(size, **motion))


@pytest.mark.parametrize("motion", [dict(zoom=1.03), dict(shift=(1.5, -0.75), angle_deg=1.0, zoom=1.02)])
def test_sharp_frames_are_estimated_at_full_resolution(motion):
    # The medium preset alone stops at half resolution: at 64² that misses sub-pixel
    # motion by a third of a pixel or more.
    video, true = _coffee_video(motion)
    inside = flow.in_frame(true)[:, 0] > 0
    err = {level: float((flow.estimate(video[:1], video[1:], dis_level=level) - true).norm(dim=1)[inside].mean())
           for level in (None, 1)}  # None: the rule's, for detail 1
    assert err[None] < 0.2 and err[None] < 0.6 * err[1], err


def test_an_sr_baseline_is_estimated_at_its_detail_not_its_pixels():
    # A half-input-pixel translation: the bicubic ×4 baseline's finest levels hold only
    # aliasing, which pulls a full-resolution search off the motion.
    video, true = _coffee_video(dict(shift=(2.0, 1.0)))
    sr = inverse.SuperResolution(4, "bicubic")
    base = sr.baseline(sr.degrade(video))
    inside = flow.in_frame(true)[:, 0] > 0
    err = {d: float((flow.estimate(base[:1], base[1:], detail=d) - true).norm(dim=1)[inside].mean()) for d in (1, 4)}
    assert err[4] < 0.7 * err[1], err


def test_an_sr_baseline_is_blurred_before_its_motion_is_searched():
    # The same translation, with and without the rule's anti-alias blur: above the input's
    # Nyquist frequency the aliasing moves differently from the scene.
    video, true = _coffee_video(dict(shift=(2.0, 1.0)))
    sr = inverse.SuperResolution(4, "bicubic")
    base = sr.baseline(sr.degrade(video))
    inside = flow.in_frame(true)[:, 0] > 0
    err = {blur: float((flow.estimate(base[:1], base[1:], detail=4, blur=blur) - true).norm(dim=1)[inside].mean())
           for blur in (0.0, None)}  # None: the rule's σ
    assert err[None] < 0.9 * err[0.0], err


# --------------------------------------------------------------------------
# propagate


def test_propagate_copies_what_another_frame_saw_and_leaves_the_rest():
    # Four crops panning 3 px per frame under a static hole 20 px wide: a hole pixel is
    # filled exactly when the content under it shows in some other frame, else left.
    t_count, h, w, d, hole = 4, 24, 64, 3, (20, 40)
    frames = torch.cat([shifted_pair(d * t, 0, h=h, w=w)[1] for t in range(t_count)])
    known = torch.ones(t_count, 1, h, w)
    known[..., hole[0] : hole[1]] = 0
    fwd, bwd = const_flow(d, 0, h, w, t_count - 1), const_flow(-d, 0, h, w, t_count - 1)
    filled, now_known = flow.propagate(frames * known, known, fwd, bwd)
    expected = torch.zeros(t_count, w, dtype=torch.bool)
    for t in range(t_count):  # column c of frame t shows in frame s at c + d (s − t)
        for c in range(w):
            expected[t, c] = any(0 <= c + d * (s - t) < w and not hole[0] <= c + d * (s - t) < hole[1]
                                 for s in range(t_count))
    assert torch.equal(now_known[:, 0].bool(), expected[:, None, :].expand(-1, h, -1))
    assert torch.allclose(filled * now_known, frames * now_known, atol=1e-5)
    assert not now_known[0, 0, :, 20:31].any() and now_known[0, 0, :, 31:40].all()


def test_propagate_bad_input():
    frames, known = torch.zeros(3, 3, 8, 8), torch.ones(3, 1, 8, 8)
    with pytest.raises(ValueError, match="^fwd: need 2 flows"):
        flow.propagate(frames, known, torch.zeros(3, 2, 8, 8), torch.zeros(3, 2, 8, 8))
    with pytest.raises(ValueError, match="^known: shape"):
        flow.propagate(frames, known[:2], torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8, 8))


# --------------------------------------------------------------------------
# pairs without flow


def rocket_pan(x0=20, y0=32, frames=6, size=(16, 24), step=2):
    """Integer crops of the rocket photograph panned diagonally: low-texture sky, where
    at ×2 no match between frames 3–4 and 4–5 survives the checks (the reported clip)."""
    rocket = data.rocket().astype(np.float32) / 255
    h, w = size
    return torch.stack([_t(rocket[y0 + step * t : y0 + step * t + h, x0 + step * t : x0 + step * t + w])[0]
                        for t in range(frames)])


def test_pairs_without_trusted_flow_have_none():
    op = inverse.SuperResolution(2, "bicubic")
    guide = op.baseline(rocket_pan())
    fwd, bwd = flow.restoration_flows(guide, torch.ones(6, 1, 32, 48), detail=2)
    assert flow.linked(fwd).tolist() == flow.linked(bwd).tolist() == [True, True, True, False, False]
    assert torch.isnan(fwd[3:]).all() and torch.isnan(bwd[3:]).all()
    assert torch.isfinite(fwd[:3]).all() and torch.isfinite(bwd[:3]).all()
    # Why: less than MIN_TRUSTED of those pairs survives the forward-backward check.
    raw_f, raw_b = (flow.estimate(a, b, detail=2) for a, b in ((guide[:-1], guide[1:]), (guide[1:], guide[:-1])))
    trusted = flow.consistency_mask(raw_f, raw_b).flatten(1).mean(1)
    assert (trusted[3:] < flow.MIN_TRUSTED).all() and (trusted[:3] >= flow.MIN_TRUSTED).all()


def test_frames_too_small_for_dis_have_no_flow():
    frames = torch.rand(3, 3, 8, 10)
    fwd, bwd = flow.restoration_flows(frames, torch.ones(3, 1, 8, 10), size=(16, 20))
    assert fwd.shape == bwd.shape == (2, 2, 16, 20)
    assert not flow.linked(fwd).any() and not flow.linked(bwd).any()


def test_propagate_carries_nothing_across_a_pair_without_flow():
    frames = torch.rand(3, 3, 8, 8)
    known = torch.ones(3, 1, 8, 8)
    known[1, :, 2:5, 2:5] = 0
    zero = torch.zeros(2, 2, 8, 8)
    _, filled = flow.propagate(frames * known, known, zero, zero)
    assert filled[1].min() == 1  # frames 0 and 2 saw the hole
    unlinked = zero.clone()
    unlinked[:] = float("nan")
    _, filled = flow.propagate(frames * known, known, unlinked, unlinked)
    torch.testing.assert_close(filled, known)
    half = zero.clone()
    half[1] = float("nan")  # frame 0 still sees the hole through the pair that has flow
    _, filled = flow.propagate(frames * known, known, half, half)
    assert filled[1].min() == 1
