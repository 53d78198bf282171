"""Tests for raywarp.synthetic: layered photo pairs, masks, stereo pair, test videos."""

import cv2
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


@pytest.fixture(scope="module", params=S.MOTIONS)
def batch(request):
    return S.make_batch(3, 12, size=(96, 128), motions=(request.param,))


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


@pytest.mark.parametrize("motions", [S.MOTIONS, ("perspective",)])
def test_deterministic_by_seed(motions):
    a, b, c = (S.make_batch(seed, 4, (64, 64), motions=motions) for seed in (7, 7, 8))
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


# Perspective layers built by hand: a camera with focal length 100 px over a 64 x 80 frame.
SIZE = (64, 80)
K = np.array([[100.0, 0, 39.5], [0, 100.0, 31.5], [0, 0, 1]])


def texture(photo):
    """A 2x-magnified crop of `photo` (smooth: bilinear interpolation error stays small)."""
    return S.load_photo(photo), np.array([[0.5, 0, 120.0], [0, 0.5, 100.0], [0, 0, 1]])


def facing(inv_depth):
    """A plane facing the camera at depth 1/inv_depth: n = (0, 0, inv_depth)."""
    return np.array([0.0, 0.0, inv_depth])


def test_homography_layer_flow_is_exact():
    # A plane tilted 45° about the vertical axis, the camera turning 3° and moving sideways and forward.
    plane = np.array([0.5, 0.0, 0.5])  # n·X = 1: inverse depth 0.5 (1 + u), u = (x - 39.5)/100
    rotation = cv2.Rodrigues(np.deg2rad([1.0, 3.0, 2.0]))[0]
    translation = np.array([0.08, -0.03, 0.3])
    pair = S._pair([S._plane_layer(*texture("chelsea"), K, plane, rotation, translation)], SIZE)

    # Independent of the homography: back-project each pixel onto the plane, move, project.
    h, w = SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.linalg.inv(K) @ np.stack([x.ravel(), y.ravel(), np.ones(x.size)])
    moved = K @ (rotation @ (rays / (plane @ rays)) + translation[:, None])
    target = (moved[:2] / moved[2]).reshape(2, h, w)
    flow = pair["flow"].double().numpy()
    assert np.abs(flow - (target - np.stack([x, y]))).max() < 1e-3
    # Genuinely projective: the best affine fit to the flow misses by over half a pixel.
    design = np.stack([x.ravel(), y.ravel(), np.ones(x.size)], 1)
    residual = flow.reshape(2, -1).T - design @ np.linalg.lstsq(design, flow.reshape(2, -1).T, rcond=None)[0]
    assert np.abs(residual).max() > 0.5

    # Warping frame 1 by the flow gives frame 0 back where visible, to interpolation error.
    visible = pair["occlusion"][None]
    assert 0.6 < visible.mean() < 1
    warped = backward_warp(pair["frame1"][None], pair["flow"][None])
    err = masked_mean_abs(warped, pair["frame0"][None], visible)
    assert err < 0.01 < 0.1 * masked_mean_abs(pair["frame1"][None], pair["frame0"][None], visible)


def test_depth_decides_occlusion_and_parallax():
    # A disc at inverse depth 2 listed *before* the background plane at inverse depth 0.5:
    # depth, not list order, puts it in front. The camera moves sideways only.
    disc = (39.5, 31.5, np.full(S._ANGLES.shape, 12.0))
    translation = np.array([-0.04, 0.0, 0.0])
    near = S._plane_layer(*texture("astronaut"), K, facing(2.0), np.eye(3), translation, disc)
    far = S._plane_layer(*texture("coffee"), K, facing(0.5), np.eye(3), translation, None)
    pair = S._pair([near, far], SIZE)
    _, top = S._render([near, far], 0, SIZE)
    h, w = SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    in_disc = (x - 39.5) ** 2 + (y - 31.5) ** 2 < 12.0**2
    assert (top[in_disc] == 0).all() and (top[~in_disc] == 1).all()

    # Parallax: displacement f t / z, inversely proportional to depth (-8 px near, -2 px far).
    flow = pair["flow"].numpy()
    assert np.allclose(flow[0][in_disc], -8.0, atol=1e-4) and np.allclose(flow[0][~in_disc], -2.0, atol=1e-4)
    assert np.abs(flow[1]).max() < 1e-4
    # The background going under the disc in frame 1 is occluded; the disc and the rest are
    # visible (where they stay in frame).
    visible = pair["occlusion"][0].numpy() > 0
    under = ((x - 2.0 - 31.5) ** 2 + (y - 31.5) ** 2 < 11.5**2) & ~in_disc
    clear = ((x - 2.0 - 31.5) ** 2 + (y - 31.5) ** 2 > 12.5**2) & ~in_disc & (x >= 2)
    assert under.sum() > 20 and not visible[under].any()
    assert visible[in_disc].all() and visible[clear].all()


def test_crease_between_planes():
    # Two unbounded planes crossing along the column x = 39.5: each pixel shows the nearer.
    wall = facing(1.0)
    floor = np.array([3.0, 0.0, 1.0])  # inverse depth 1 + 3u: nearer right of the centre column
    layers = [S._plane_layer(*texture(p), K, n, np.eye(3), np.array([0.02, 0.01, 0.05]))
              for p, n in (("chelsea", floor), ("coffee", wall))]
    _, top = S._render(layers, 0, SIZE)
    assert (top[:, 40:] == 0).all() and (top[:, :40] == 1).all()
    # Both planes hold the same 3D line: the flow is continuous across it.
    flow = S._pair(layers, SIZE)["flow"].numpy()
    assert np.abs(flow[:, :, 40] - flow[:, :, 39]).max() < 0.1


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
