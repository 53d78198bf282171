"""Video inverse problems: SR / inpainting / denoising operators, mask specs, padding."""

import cv2
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch
import torch.nn.functional as F

from raywarp import synthetic
from raywarp.inverse import (
    Denoising,
    Inpainting,
    SuperResolution,
    crop,
    laplace_fill,
    make_operator,
    pad_measurement,
    pad_to_multiple,
    parse_mask,
)
from raywarp.metrics import psnr


def photo(h, w, top=0, left=0, name="astronaut", frames=1, dtype=torch.float32):
    """Crops of a real photograph (frames, 3, h, w), frame t shifted 3t pixels right."""
    img = synthetic.load_photo(name)
    crops = [img[top:top + h, left + 3 * t:left + 3 * t + w].transpose(2, 0, 1) for t in range(frames)]
    return torch.from_numpy(np.ascontiguousarray(np.stack(crops))).to(dtype)


KERNELS = ["area", "bicubic"]


# ------------------------------------------------------------------------ super-resolution


@pytest.mark.parametrize("scale", [2, 4])
def test_area_kernel_is_avg_pool(scale):
    x = photo(44, 60, 100, 150, frames=2)
    torch.testing.assert_close(SuperResolution(scale, "area").forward(x), F.avg_pool2d(x, scale), atol=1e-6, rtol=0)


def test_bicubic_keeps_constants_and_rows_sum_to_one():
    op = SuperResolution(4, "bicubic")
    x = torch.full((1, 3, 44, 60), 0.37)
    torch.testing.assert_close(op.forward(x), torch.full((1, 3, 11, 15), 0.37), atol=1e-6, rtol=0)
    # Rows of each axis matrix: A of a unit impulse per input pixel gives the columns.
    eye = torch.eye(44, dtype=torch.float64)[:, None, :, None].expand(44, 1, 44, 4)
    rows = op.forward(eye)[..., 0].squeeze(1).T  # (11, 44) = Dy
    torch.testing.assert_close(rows.sum(1), torch.ones(11, dtype=torch.float64), atol=1e-12, rtol=0)


def test_bicubic_interior_matches_pil_antialiased_bicubic():
    image = pytest.importorskip("PIL.Image")
    x = photo(64, 96, 50, 120)
    ours = SuperResolution(4, "bicubic").forward(x)[0]
    pil = np.stack([
        np.asarray(image.fromarray(c.numpy(), mode="F").resize((24, 16), image.BICUBIC)) for c in x[0]
    ])
    # PIL truncates the kernel at borders where we mirror: compare 2 LR pixels in from each side.
    np.testing.assert_allclose(ours[:, 2:-2, 2:-2].numpy(), pil[:, 2:-2, 2:-2], atol=2e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_pinv_is_right_inverse_and_pseudo_inverse(kernel):
    op = SuperResolution(4, kernel)
    y = op.forward(photo(44, 60, 200, 180, frames=2))
    up = op.pinv(y)
    assert up.shape == (2, 3, 44, 60) and op.output_size(y) == (44, 60)
    torch.testing.assert_close(op.forward(up), y, atol=1e-5, rtol=0)  # A A⁺ = I
    torch.testing.assert_close(op.pinv(op.forward(up)), up, atol=1e-5, rtol=0)  # A⁺ A A⁺ = A⁺
    # A⁺A is the orthogonal projector onto the row space: symmetric.
    u, v = torch.rand(2, 1, 3, 44, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pu, pv = op.pinv(op.forward(u)), op.pinv(op.forward(v))
    assert abs(float((pu * v).sum() - (u * pv).sum())) < 1e-9


@pytest.mark.parametrize("kernel", KERNELS)
def test_project_gives_exact_consistency(kernel):
    op = SuperResolution(4, kernel)
    x = photo(44, 60, 220, 200)
    y = op.forward(x)
    guess = photo(44, 60, 10, 10)  # some other image
    assert op.measurement_error(guess, y) > 0.01
    fixed = op.project(guess, y)
    assert op.measurement_error(fixed, y) < 1e-5
    # Projecting the truth changes nothing.
    torch.testing.assert_close(op.project(x, y), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_bicubic_baseline_beats_nearest(kernel):
    op = SuperResolution(4, kernel)
    x = photo(128, 128, 150, 180)
    y = op.forward(x)
    base = op.baseline(y)
    nearest = F.interpolate(y, scale_factor=4, mode="nearest")
    assert base.shape == x.shape and 0 <= float(base.min()) and float(base.max()) <= 1
    assert float(psnr(base, x)) > float(psnr(nearest, x)) + 1.0
    assert torch.equal(op.known(y), torch.ones(1, 1, 128, 128))


def test_sr_accepts_numpy_and_float64():
    op = SuperResolution(2, "bicubic")
    x = photo(20, 30)[0].numpy()
    y = op.forward(x)
    assert isinstance(y, np.ndarray) and y.shape == (3, 10, 15)
    x64 = photo(20, 30, dtype=torch.float64)
    assert op.forward(x64).dtype == torch.float64
    assert op.measurement_error(op.project(x64 * 0, op.forward(x64)), op.forward(x64)) < 1e-12


# ------------------------------------------------------------------------------ inpainting


def exact_harmonic(img: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Direct sparse solve of Δu = 0 (5-point, Neumann borders) in the holes of img (C,H,W)."""
    h, w = known.shape
    idx = np.arange(h * w).reshape(h, w)
    a = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    b = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    ones = np.ones(a.size)
    rows, cols = np.concatenate([a, b, a, b]), np.concatenate([b, a, a, b])
    lap = sp.csr_matrix((np.concatenate([ones, ones, -ones, -ones]), (rows, cols)), shape=(h * w, h * w))
    unk = ~known.ravel()
    solve = spl.splu(lap[unk][:, unk].tocsc()).solve
    out = img.reshape(img.shape[0], -1).astype(np.float64).copy()
    for c in range(len(out)):
        out[c, unk] = solve(-(lap[unk][:, ~unk] @ out[c, ~unk]))
    return out.reshape(img.shape)


def test_inpainting_operator_algebra():
    x = photo(45, 60, 120, 160, frames=2)
    mask = parse_mask("rect:10,5,30,25+circle:45,35,6", (45, 60), 2)
    op = Inpainting(mask)
    y = op.forward(x)
    assert torch.equal(y, x * mask)
    torch.testing.assert_close(op.pinv(op.forward(op.pinv(y))), op.pinv(y))
    guess = torch.rand_like(x)
    out = op.project(guess, y)
    observed = mask.expand_as(x).bool()
    assert torch.equal(out[observed], x[observed])  # observed pixels kept exactly
    assert torch.equal(out[~observed], guess[~observed])
    assert op.measurement_error(out, y) == 0.0 and op.measurement_error(guess, y) > 0.1
    assert torch.equal(op.known(y), mask)
    assert op.output_size(y) == (45, 60)
    # Values of y in the holes are don't-care: the raw frame works as a measurement.
    torch.testing.assert_close(op.project(guess, x), out)


@pytest.mark.parametrize("top, left", [(100, 200), (300, 100)])
def test_laplace_baseline_is_the_harmonic_fill_and_beats_mean_fill(top, left):
    skimage_restoration = pytest.importorskip("skimage.restoration")
    x = photo(45, 60, top, left)
    mask = parse_mask("rect:12,8,34,30", (45, 60), 1)
    op = Inpainting(mask)
    y = op.forward(x)
    base = op.baseline(y)
    known = mask[0, 0].numpy() > 0.5
    # The solver converges to the discrete harmonic solution.
    ref = exact_harmonic(x[0].numpy(), known)
    assert np.abs(base[0].numpy() - ref).max() < 2e-3
    hole = mask.expand_as(x) == 0
    assert torch.equal(base[~hole], x[~hole])
    mean_fill = torch.where(hole, (y.sum((2, 3), keepdim=True) / mask.sum()), y)
    biharmonic = skimage_restoration.inpaint_biharmonic(x[0].permute(1, 2, 0).numpy(), ~known, channel_axis=-1)
    biharmonic = torch.from_numpy(biharmonic.transpose(2, 0, 1)).float()[None]
    p_base, p_mean, p_input = float(psnr(base, x)), float(psnr(mean_fill, x)), float(psnr(y, x))
    p_bi = float(psnr(biharmonic, x))
    assert p_base > p_mean + 1.0 and p_base > p_input + 5.0 and p_bi > p_input + 5.0
    assert abs(p_base - p_bi) < 2.5  # a sanity comparison: both smooth fills, same ballpark


def test_laplace_fill_edge_cases():
    x = photo(16, 16)
    ones = torch.ones(1, 1, 16, 16)
    assert torch.equal(laplace_fill(x, ones), x)
    two = torch.cat([x, x])
    both = laplace_fill(two, torch.cat([ones, ones * 0]))
    assert torch.equal(both[0], x[0]) and torch.equal(both[1], torch.full_like(x[0], 0.5))


def test_per_frame_masks_and_clip_selection():
    frames = 5
    x = photo(24, 32, 100, 100, frames=frames)
    mask = parse_mask("rect:2,2,8,8@4,2", (24, 32), frames)
    assert not torch.equal(mask[0], mask[1])
    op = Inpainting(mask)
    assert op.frames == frames
    torch.testing.assert_close(op.forward(x), x * mask)
    clip = op.select(1, 3)
    assert clip.frames == 2 and torch.equal(clip.mask, mask[1:3])
    torch.testing.assert_close(clip.forward(x[1:3]), op.forward(x)[1:3])
    torch.testing.assert_close(clip.baseline(clip.forward(x[1:3])), op.baseline(op.forward(x))[1:3], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="x:.*select"):
        op.forward(x[1:3])  # a clip needs its own span's masks
    with pytest.raises(ValueError, match="start, stop"):
        op.select(3, 7)
    static = Inpainting(mask[:1])
    assert static.select(2, 4) is static
    assert static.forward(x).shape == x.shape
    assert SuperResolution(4).select(0, 2) == SuperResolution(4)


# ------------------------------------------------------------------------------- denoising


def test_denoising():
    op = Denoising(0.1)
    x = photo(64, 64, 150, 150, frames=2)
    assert torch.equal(op.forward(x), x) and torch.equal(op.pinv(x), x)
    y = op.degrade(x, generator=3)
    assert torch.equal(y, op.degrade(x, generator=3)) and not torch.equal(y, op.degrade(x, generator=4))
    assert abs(op.measurement_error(x, y) - 0.1) < 0.005  # the truth sits at RMS ≈ σ
    guess = torch.rand_like(x)
    assert torch.equal(op.project(guess, y), guess)  # no hard projection onto noisy data
    base = op.baseline(y)
    assert torch.equal(base, y.clamp(0, 1))
    assert torch.equal(op.known(y), torch.ones(2, 1, 64, 64))


def test_degrade_is_forward_for_noiseless_operators():
    x = photo(16, 24)
    for op in (SuperResolution(4, "area"), Inpainting(parse_mask("rect:2,2,6,6", (16, 24), 1))):
        assert torch.equal(op.degrade(x), op.forward(x))


def test_make_operator():
    assert make_operator("sr", scale=2, kernel="area") == SuperResolution(2, "area")
    assert make_operator("denoise", sigma=0.2) == Denoising(0.2)
    mask = parse_mask("circle:0.5,0.5,0.2", (20, 20), 3)
    op = make_operator("inpaint", mask=mask)
    assert isinstance(op, Inpainting) and op.name == "inpaint" and op.frames == 3
    assert [make_operator(t, mask=mask).name for t in ("sr", "inpaint", "denoise")] == ["sr", "inpaint", "denoise"]


# ------------------------------------------------------------------------------ mask specs


def test_parse_rect_in_pixels_and_fractions():
    m = parse_mask("rect:2,1,5,3", (4, 6), 2)
    assert m.shape == (2, 1, 4, 6) and m.dtype == torch.float32
    expected = np.ones((4, 6), np.float32)
    expected[1:3, 2:5] = 0  # the shape is the hole
    assert np.array_equal(m[0, 0].numpy(), expected) and np.array_equal(m[1, 0].numpy(), expected)
    frac = parse_mask("rect:0.25,0.5,0.75,1", (8, 12), 1)
    expected = np.ones((8, 12), np.float32)
    expected[4:8, 3:9] = 0
    assert np.array_equal(frac[0, 0].numpy(), expected)


def test_parse_circle_union_and_fractions():
    m = parse_mask("circle:10,8,3", (16, 20), 1)[0, 0].numpy()
    # Pixel centres (col + ½, row + ½) within 3 of (10, 8): row 7 spans columns 7..12.
    assert np.array_equal(np.flatnonzero(m[7] == 0), np.arange(7, 13))
    assert np.array_equal(np.flatnonzero(m[:, 10] == 0), np.arange(5, 11))
    assert int((m == 0).sum()) == 32
    frac, pixels = parse_mask("circle:0.5,0.5,0.25", (40, 40), 1), parse_mask("circle:20,20,10", (40, 40), 1)
    assert torch.equal(frac, pixels)
    both = parse_mask("rect:0,0,2,2 + circle:10,8,3", (16, 20), 1)[0, 0].numpy()
    assert int((both == 0).sum()) == 36 and both[0, 0] == 0 and both[7, 7] == 0


def test_parse_moving_shape():
    m = parse_mask("rect:0,0,2,2@3,1+rect:8,4,10,6", (6, 10), 3)
    for t in range(3):
        expected = np.ones((6, 10), np.float32)
        expected[t:t + 2, 3 * t:3 * t + 2] = 0
        expected[4:6, 8:10] = 0
        assert np.array_equal(m[t, 0].numpy(), expected), t


def test_parse_mask_files(tmp_path):
    img = np.zeros((8, 10), np.uint8)
    img[2:5, 3:7] = 255  # white = hole
    cv2.imwrite(str(tmp_path / "hole.png"), img)
    m = parse_mask(f"file:{tmp_path / 'hole.png'}", (8, 10), 3)
    assert m.shape == (3, 1, 8, 10)
    assert np.array_equal(m[2, 0].numpy(), (img == 0).astype(np.float32))
    frames = tmp_path / "frames"
    frames.mkdir()
    for name, col in [("b.png", 1), ("a.png", 0), ("c.png", 2)]:  # sorted order: a, b, c
        f = np.zeros((8, 10, 3), np.uint8)
        f[:, col] = 255
        cv2.imwrite(str(frames / name), f)
    (frames / "notes.txt").write_text("ignored")
    m = parse_mask(f"dir:{frames}", (8, 10), 3)
    for t in range(3):
        assert np.array_equal(np.flatnonzero(m[t, 0, 0] == 0), [t])
    with pytest.raises(ValueError, match="expected 4"):
        parse_mask(f"dir:{frames}", (8, 10), 4)
    with pytest.raises(ValueError, match="never resized"):
        parse_mask(f"file:{tmp_path / 'hole.png'}", (16, 20), 1)
    with pytest.raises(ValueError, match="does not exist"):
        parse_mask(f"file:{tmp_path / 'missing.png'}", (8, 10), 1)
    with pytest.raises(ValueError, match="not a directory"):
        parse_mask(f"dir:{tmp_path / 'nowhere'}", (8, 10), 1)


@pytest.mark.parametrize("spec", ["rect:1,1,4,4@1,0+circle:6,5,2", "rect:0.1,0.2,0.5,0.6", "dir"])
def test_a_span_of_a_mask_is_that_span_of_the_whole(spec, tmp_path):
    if spec == "dir":
        for t in range(12):
            img = np.zeros((8, 10), np.uint8)
            img[t % 8, :] = 255
            cv2.imwrite(str(tmp_path / f"{t:03d}.png"), img)
        spec = f"dir:{tmp_path}"
    whole = parse_mask(spec, (8, 10), 12)
    torch.testing.assert_close(parse_mask(spec, (8, 10), 12, 5, 9), whole[5:9])
    torch.testing.assert_close(parse_mask(spec, (8, 10), 12, 11), whole[11:])
    with pytest.raises(ValueError, match="start, stop"):
        parse_mask(spec, (8, 10), 12, 9, 13)


@pytest.mark.parametrize(
    "spec", ["rect:1,2,3", "blob:1,2,3", "rect:a,b,c,d", "circle:1,2,3@4", "rect:1,2,3,4++", "circle:5,5,-2"]
)
def test_parse_mask_rejects_malformed_specs(spec):
    with pytest.raises(ValueError, match="spec") as err:
        parse_mask(spec, (10, 10), 1)
    assert spec in str(err.value)


def test_parse_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="spec"):
        parse_mask("", (10, 10), 1)
    with pytest.raises(ValueError, match="size"):
        parse_mask("rect:1,1,2,2", (10,), 1)
    with pytest.raises(ValueError, match="frames"):
        parse_mask("rect:1,1,2,2", (10, 10), 0)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("scale", [0, 1, 3.5, -2, "4", True])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        SuperResolution(scale)


def test_bad_operator_input():
    with pytest.raises(ValueError, match="kernel"):
        SuperResolution(4, "lanczos")
    with pytest.raises(ValueError, match="x:.*divisible"):
        SuperResolution(4).forward(photo(45, 60))
    op = SuperResolution(4)
    with pytest.raises(ValueError, match="y:"):
        op.project(photo(44, 60), photo(12, 15))
    with pytest.raises(ValueError, match="x:.*mask"):
        Inpainting(torch.ones(1, 1, 10, 10)).forward(photo(12, 10))
    with pytest.raises(ValueError, match="mask"):
        Inpainting(torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="mask"):
        Inpainting(torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="task"):
        make_operator("deblur")
    with pytest.raises(ValueError, match="mask"):
        make_operator("inpaint")
    with pytest.raises(ValueError, match="mask"):
        make_operator("inpaint", mask="rect:1,1,2,2")
    with pytest.raises(ValueError, match="sigma"):
        Denoising(0)
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(photo(10, 10), 0)
    with pytest.raises(ValueError, match="mode"):
        pad_to_multiple(photo(10, 10), 4, mode="wrap")
    with pytest.raises(ValueError, match="size"):
        crop(photo(10, 10), (12, 10))


# --------------------------------------------------------------------------------- padding


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
def test_pad_crop_roundtrip(mode):
    x = photo(45, 61, 30, 40, frames=2)
    padded, size = pad_to_multiple(x, 16, mode)
    assert padded.shape == (2, 3, 48, 64) and size == (45, 61)
    assert torch.equal(crop(padded, size), x)
    if mode == "reflect":
        torch.testing.assert_close(padded[..., 45, :61], x[..., 43, :])  # mirrored about the edge pixel
    tiny, size = pad_to_multiple(photo(3, 2), 8, mode)  # pads larger than the image
    assert tiny.shape == (1, 3, 8, 8) and torch.equal(crop(tiny, size), photo(3, 2))
    same, size = pad_to_multiple(x[..., :32, :48], 16, mode)
    assert same.shape == (2, 3, 32, 48) and size == (32, 48)


@pytest.mark.parametrize("kernel", KERNELS)
def test_pad_measurement_sr(kernel):
    op = SuperResolution(4, kernel)
    x = photo(44, 60, 90, 110)
    y = op.forward(x)
    padded_op, yp, size = pad_measurement(op, y, 64)
    assert size == (44, 60) and yp.shape[-2:] == (16, 16) and padded_op.output_size(yp) == (64, 64)
    restored = crop(padded_op.project(torch.zeros(1, 3, 64, 64), yp), size)
    assert restored.shape == x.shape
    if kernel == "area":
        assert op.measurement_error(restored, y) < 1e-5  # blocks never straddle the cut
    assert op.measurement_error(op.project(restored, y), y) < 1e-5  # the final projection


def test_pad_measurement_inpainting_and_denoising():
    x = photo(45, 60, frames=2)
    op = Inpainting(parse_mask("rect:40,30,60,45@1,0", (45, 60), 2))
    y = op.forward(x)
    padded_op, yp, size = pad_measurement(op, y, 16)
    assert yp.shape == (2, 3, 48, 64) and padded_op.mask.shape == (2, 1, 48, 64) and size == (45, 60)
    assert torch.equal(crop(padded_op.mask, size), op.mask)
    restored = crop(padded_op.baseline(yp), size)
    assert op.measurement_error(restored, y) == 0.0
    dn = Denoising(0.1)
    dop, dyp, size = pad_measurement(dn, x, 32)
    assert dop is dn and dyp.shape == (2, 3, 64, 64) and size == (45, 60)


def test_hole_values_are_ignored():
    x = photo(20, 24, 260, 300)
    op = Inpainting(parse_mask("rect:5,5,15,15", (20, 24), 1))
    y = op.forward(x)
    poisoned = torch.where(op.known(y).expand_as(y).bool(), y, torch.full_like(y, float("nan")))
    torch.testing.assert_close(op.baseline(poisoned), op.baseline(y), atol=1e-6, rtol=0)
    assert torch.equal(op.project(x * 0, poisoned), op.project(x * 0, y))
    with pytest.raises(ValueError, match="y:"):
        laplace_fill(torch.full_like(y, float("nan")), op.known(y))


def test_propagated_operators():
    frames = torch.rand(3, 3, 16, 16)
    fwd, bwd = torch.zeros(2, 2, 16, 16), torch.zeros(2, 2, 16, 16)
    fwd[:, 0], bwd[:, 0] = 4.0, -4.0  # the scene moves right by 4 px a frame
    for op in (SuperResolution(2), Denoising(0.1)):
        y = op.degrade(frames)
        same_op, same_y = op.propagated(y, fwd, bwd)
        assert same_op is op and same_y is y
    op = Inpainting(parse_mask("rect:0,0,4,16", (16, 16), 3))  # a static strip at the left edge
    y = op.degrade(frames)
    carried_op, carried = op.propagated(y, fwd, bwd)
    assert carried_op.frames == 3 and carried.shape == y.shape
    mask = carried_op.mask
    assert torch.equal(mask * op.mask, op.mask.expand(3, -1, -1, -1))  # observed pixels stay observed, as they were
    assert torch.equal(carried * op.mask, y * op.mask)
    assert mask[0].all() and mask[1].all() and not mask[2, 0, :, :4].any()  # the last frame's strip was never seen
    assert torch.equal(carried * (1 - mask), torch.zeros_like(carried))
    anchor = torch.rand(3, 16, 16)  # the last frame known whole (a neighbouring clip restored it)
    anchored_op, anchored = op.propagated(y, fwd, bwd, anchors={2: anchor})
    assert anchored_op.mask.all() and torch.equal(anchored[2], anchor)
