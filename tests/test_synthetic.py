"""Tests for raywarp.synthetic: layered photo pairs, masks, stereo pair, test videos."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raywarp import synthetic as S


def backward_warp(img, flow):
    """Bilinear sample of img (B,C,H,W) at p + flow(p) (pixels, align_corners=True)."""
    _, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    gx = (xs + flow[:, 0]) / (w - 1) * 2 - 1
    gy = (ys + flow[:, 1]) / (h - 1) * 2 - 1
    return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", align_corners=True)


def masked_mean_abs(a, b, mask):
    return float(((a - b).abs().mean(1, keepdim=True) * mask).sum() / mask.sum())


@pytest.fixture(scope="module")
def batch():
    return S.make_batch(3, 12, size=(96, 128))


def test_batch_shapes_dtypes_ranges(batch):
    assert batch["frame0"].shape == (12, 3, 96, 128)
    assert batch["frame1"].shape == (12, 3, 96, 128)
    assert batch["flow"].shape == (12, 2, 96, 128)
    assert batch["occlusion"].shape == (12, 1, 96, 128)
    for v in batch.values():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
    for k in ("frame0", "frame1"):
        assert 0 <= batch[k].min() and batch[k].max() <= 1
    assert set(batch["occlusion"].unique().tolist()) <= {0.0, 1.0}
    # Motions are bounded (<= ~10% shift plus rotation/scale about a centre inside the frame).
    assert batch["flow"].abs().max() < 0.5 * 128


def test_deterministic_by_seed():
    a, b, c = S.make_batch(7, 2, (64, 64)), S.make_batch(7, 2, (64, 64)), S.make_batch(8, 2, (64, 64))
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["frame0"], c["frame0"])
    r1, r2 = np.random.default_rng(1), np.random.default_rng(1)
    assert np.array_equal(S.random_mask(r1, (32, 32)), S.random_mask(r2, (32, 32)))


def test_flow_consistent_with_frames(batch):
    occ, flow = batch["occlusion"], batch["flow"]
    # Interior: visible, 2 px away from occlusion edges, and no flow jump (layer boundary) nearby.
    interior = -F.max_pool2d(-occ, 5, 1, 2)
    jump = (F.max_pool2d(flow, 5, 1, 2) + F.max_pool2d(-flow, 5, 1, 2)).amax(1, keepdim=True) > 1.5
    mask = interior * (~jump)
    assert mask.mean() > 0.4
    warped = backward_warp(batch["frame1"], flow)
    err = masked_mean_abs(warped, batch["frame0"], mask)
    zero_flow_err = masked_mean_abs(batch["frame1"], batch["frame0"], mask)
    assert err < 0.02
    assert err < 0.2 * zero_flow_err


def test_occlusion_marks_covered_pixels(batch):
    # Pixels whose target is inside frame 1 yet marked occluded can only come from a
    # foreground layer covering them there: there must be some over the batch.
    _, _, h, w = batch["flow"].shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    qx, qy = xs + batch["flow"][:, 0], ys + batch["flow"][:, 1]
    inside = (qx >= 1) & (qx <= w - 2) & (qy >= 1) & (qy <= h - 2)
    covered = inside & (batch["occlusion"][:, 0] == 0)
    assert covered.float().mean() > 0.005
    # Targets that leave the frame are always marked occluded.
    outside = (qx < 0) | (qx > w - 1) | (qy < 0) | (qy > h - 1)
    assert (batch["occlusion"][:, 0][outside] == 0).all()


def test_photo_lists():
    assert "stereo_motorcycle" not in S.TRAIN_PHOTOS + S.HELDOUT_PHOTOS
    assert not set(S.TRAIN_PHOTOS) & set(S.HELDOUT_PHOTOS)
    with pytest.raises(ValueError):
        S.load_photo("stereo_motorcycle")
    with pytest.raises(ValueError):
        S.make_pair(np.random.default_rng(0), (32, 32), photos=("stereo_motorcycle",))
    img = S.load_photo("camera")  # grayscale -> 3 channels
    assert img.shape == (512, 512, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    pair = S.make_pair(np.random.default_rng(0), (48, 40), photos=S.HELDOUT_PHOTOS)
    assert pair["frame0"].shape == (3, 48, 40)


def test_iid_mask_density():
    rng = np.random.default_rng(0)
    for density in (0.01, 0.05, 0.1):
        m = S.iid_mask(rng, (128, 128), density)
        assert m.dtype == np.float32 and m.shape == (128, 128)
        assert abs(m.mean() - density) < 0.25 * density


def test_hole_mask_coverage():
    rng = np.random.default_rng(0)
    for _ in range(30):
        m = S.hole_mask(rng, (96, 128))
        assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
        assert 0.1 <= 1 - m.mean() <= 0.4


def test_random_mask_mixture():
    rng = np.random.default_rng(0)
    known = np.array([S.random_mask(rng, (64, 64)).mean() for _ in range(40)])
    assert ((known <= 0.15).sum() > 5) and ((known >= 0.6).sum() > 5)  # both sparse and holes


def test_stereo_pair_ground_truth():
    pair = S.stereo_pair()
    assert pair["frame0"].shape[:2] == (1, 3) and pair["flow"].shape[:2] == (1, 2)
    assert pair["frame0"].shape[-2:] == pair["flow"].shape[-2:] == pair["valid"].shape[-2:]
    valid = pair["valid"]
    assert valid.mean() > 0.5
    assert (pair["flow"][:, 1] == 0).all() and (pair["flow"][:, 0] <= 0).all()
    err = masked_mean_abs(backward_warp(pair["frame1"], pair["flow"]), pair["frame0"], valid)
    zero = masked_mean_abs(pair["frame1"], pair["frame0"], valid)
    flipped = masked_mean_abs(backward_warp(pair["frame1"], -pair["flow"]), pair["frame0"], valid)
    assert err < 0.4 * zero and err < 0.4 * flipped


def test_translate_video_is_shifted_crop():
    origin, (vx, vy) = (100, 80), (3, -2)
    video, flows = S.translate_video("astronaut", 4, (32, 48), (vx, vy), origin=origin)
    assert video.shape == (4, 3, 32, 48) and flows.shape == (3, 2, 32, 48)
    photo = torch.from_numpy(S.load_photo("astronaut").copy()).permute(2, 0, 1)
    for t in range(4):
        x0, y0 = origin[0] - t * vx, origin[1] - t * vy
        assert torch.equal(video[t], photo[:, y0:y0 + 32, x0:x0 + 48])
    assert torch.allclose(flows[:, 0], torch.full_like(flows[:, 0], vx), atol=1e-5)
    assert torch.allclose(flows[:, 1], torch.full_like(flows[:, 1], vy), atol=1e-5)


def test_affine_video_flow_consistent():
    size = (64, 80)
    video, flows = S.affine_video("chelsea", 3, size, S.affine_motion(size, (2.5, -1.0), 4.0, 1.05))
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    inside = ((xs + flows[:, 0] >= 0) & (xs + flows[:, 0] <= w - 1)
              & (ys + flows[:, 1] >= 0) & (ys + flows[:, 1] <= h - 1)).float()[:, None]
    err = masked_mean_abs(backward_warp(video[1:], flows), video[:-1], inside)
    assert err < 0.02 < masked_mean_abs(video[1:], video[:-1], inside)
