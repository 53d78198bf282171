"""Tiled denoising (`raywarp.tiles`, `Denoiser.enable_tiling`): the layout and its weights,
one tile equal to whole frames, no seams on a real photograph under the shipped prior;
inpainting in a crop around the holes (`sampler.sample_crop`).

The seam figure is `metrics.boundary_gradient` along the layout's tile edges: a seam is a
step there that the untiled output does not have.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from raywarp import inverse, metrics, synthetic
from raywarp import tiles as rtiles
from raywarp.models import _DEFAULT_SCHEDULE, PixelDenoiser, load_denoiser, tiny_latent_pipeline, tiny_pixel_unet
from raywarp.pipeline import clip as rclip
from raywarp.pipeline.config import RunConfig
from raywarp.sampler import SamplerConfig, chain_coords, sample_clip, sample_crop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (128, 128)  # output pixels; tiles of at most 64 with 16 of overlap: 3 × 3 tiles of 56²
TILE, OVERLAP = 64, 16
VELOCITY = (1.5, 0.75)  # px per frame: a pan in both directions, sub-pixel


@pytest.mark.parametrize("length,tile,overlap,multiple", [(128, 64, 16, 4), (1024, 128, 16, 4), (270, 128, 16, 8),
                                                          (97, 32, 0, 1), (40, 64, 8, 4)])
def test_layout_covers_the_grid_with_weights_summing_to_one(length, tile, overlap, multiple):
    tiles = rtiles.layout(length, length + 3, tile, overlap, multiple)
    total, covered = torch.zeros(length, length + 3), torch.zeros(length, length + 3)
    for box, w in zip(tiles.boxes, tiles.weights):
        assert box.height <= max(tile, 1) and box.width <= tile or length <= tile
        assert box.top + box.height <= length and box.left + box.width <= length + 3
        box.crop(total).add_(w[0])
        box.crop(covered).add_(1)
    torch.testing.assert_close(total, torch.ones_like(total))
    assert bool((covered >= 1).all()) and bool((tiles.weights > 0).all())
    starts, size = rtiles.axis_tiles(length, tile, overlap, multiple)
    if len(starts) > 1:
        assert size % multiple == 0 and size <= tile
        assert min(a + size - b for a, b in zip(starts, starts[1:])) >= overlap


def test_bad_tiles_are_refused_naming_the_fix():
    prior = load_denoiser("default")
    with pytest.raises(ValueError, match="tile: at least 4 px"):
        prior.enable_tiling(2, 0)
    with pytest.raises(ValueError, match="tile_overlap: between 0 and half the tile"):
        prior.enable_tiling(64, 40)


def panned_clip(frames: int = 5, size=SIZE):
    """A real photograph panned by VELOCITY at `size`, its ×4 measurement and exact flows."""
    video, fwd = synthetic.translate_video("astronaut", frames, size, VELOCITY)
    bwd = synthetic.affine_backward_flow(synthetic.affine_motion(size, shift=VELOCITY), size).expand(frames - 1, -1, -1, -1)
    op = inverse.make_operator("sr", scale=4)
    return video, op, op.forward(video), fwd, bwd.contiguous()


@pytest.mark.parametrize("kind", ["prior", "upscale", "sdxl"])
def test_a_frame_of_one_tile_equals_the_untiled_result(kind, tmp_path):
    video, op, y, fwd, bwd = panned_clip(3)
    if kind == "prior":
        denoiser, tile = load_denoiser("default"), SIZE[0]
    else:  # latent models: the VAE is tiled at the same size, so one tile is not tiled there either
        denoiser, tile = load_denoiser(tiny_latent_pipeline(kind, tmp_path / kind)), SIZE[0]
        if kind == "sdxl":
            op = inverse.make_operator("inpaint", mask=inverse.parse_mask("rect:0.3,0.3,0.7,0.7", SIZE, 3))
            y = op.forward(video)
        fwd, bwd = (F.interpolate(f, scale_factor=1 / denoiser.scale_factor, mode="area") / denoiser.scale_factor
                    for f in (fwd, bwd))
    config = SamplerConfig(steps=2, guidance_method="gradient" if kind == "prior" else "x0")
    whole = sample_clip(denoiser, op, y, fwd, bwd, seed=3, config=config).frames
    denoiser.enable_tiling(tile, 8)
    one = sample_clip(denoiser, op, y, fwd, bwd, seed=3, config=config).frames
    assert torch.equal(whole, one)
    denoiser.enable_tiling(tile // 2, 8)  # smaller tiles: runs, and is a different computation
    tiled = sample_clip(denoiser, op, y, fwd, bwd, seed=3, config=config).frames
    assert tiled.shape == whole.shape and bool(torch.isfinite(tiled).all()) and not torch.equal(tiled, whole)


def test_tiled_prediction_is_differentiable_and_blends_every_tile():
    """Self-guidance through the network and DPS take gradients through the tiles."""
    prior = load_denoiser("default").enable_tiling(TILE, OVERLAP, batch=4)
    u = torch.randn(2, 3, *SIZE, requires_grad=True)
    cond = prior.condition(None, {"baseline": torch.rand(2, 3, *SIZE), "mask": torch.ones(2, 1, *SIZE)})
    x0 = prior.predict_x0(u, 500, cond)
    (grad,) = torch.autograd.grad(x0.square().sum(), u)
    assert x0.shape == u.shape and bool(torch.isfinite(grad).all())
    # every pixel receives gradient from the tiles covering it (no tile left out)
    assert bool((grad.abs().sum(1) > 0).all())


def test_tiles_smaller_than_the_frame_leave_no_seam_on_a_panned_photo():
    """SR ×4 of a real photograph panned over 5 frames with the shipped prior, 3 × 3 tiles:
    the step across the tile edges stays within 1.1× of the untiled output's there (measured
    0.93×), and the warped warping error within 10 % of untiled (measured −14 %: the blend
    of two nearly equal predictions in an overlap is a touch smoother)."""
    video, op, y, fwd, bwd = panned_clip()
    prior = load_denoiser("default")
    config = SamplerConfig(steps=4)
    untiled = sample_clip(prior, op, y, fwd, bwd, seed=0, config=config).frames
    prior.enable_tiling(TILE, OVERLAP, batch=8)
    tiled = sample_clip(prior, op, y, fwd, bwd, seed=0, config=config).frames
    rows, cols = rtiles.layout(*SIZE, TILE, OVERLAP, prior.multiple).edges(*SIZE)
    assert len(rows) == len(cols) == 4
    ratio = metrics.boundary_gradient(tiled, rows, cols) / metrics.boundary_gradient(untiled, rows, cols)
    assert ratio <= 1.1, ratio
    err_tiled, err_untiled = (float(metrics.warping_error(x, fwd, bwd)) for x in (tiled, untiled))
    assert err_tiled <= 1.1 * err_untiled, (err_tiled, err_untiled)
    assert float(metrics.psnr(tiled, untiled)) > 35  # the same restoration, not merely a smooth one (measured 41 dB)


def test_independent_noise_per_tile_shows_the_seams_that_shared_noise_removes():
    """Each tile restored on its own and cut at the middle of its overlaps, as naive tilers
    do: with noise of its own the tiles disagree and the cuts show; with the frame's noise
    at the tile's global coordinates they agree and the cuts do not. A model that follows
    its noise (a random unconditional UNet from pure GP noise) makes the effect plain;
    with the shipped prior, conditioned on the baseline, the noise moves little
    (docs/tiling.md)."""
    video, op, y, fwd, bwd = panned_clip(3)
    schedule = DDIMScheduler.from_config(_DEFAULT_SCHEDULE).alphas_cumprod
    model = PixelDenoiser(tiny_pixel_unet(conditional=False), schedule)
    config = SamplerConfig(steps=4, strength=1.0, mode="gp-warp", num_features=500)
    tiles = rtiles.layout(*SIZE, TILE, OVERLAP, 4)
    coords = chain_coords(bwd.double(), *SIZE)
    starts, size = rtiles.axis_tiles(SIZE[0], TILE, OVERLAP, 4)  # the same along both axes
    centre = torch.tensor(starts) + size / 2
    owner = ((torch.arange(SIZE[0])[:, None] + 0.5) - centre).abs().argmin(1)  # the tile nearest each row
    nearest = owner[:, None] * len(starts) + owner[None, :]  # (H, W): the tile each pixel is cut from

    def tile_by_tile(shared: bool):
        out, pieces = torch.zeros_like(video), []
        for k, box in enumerate(tiles.boxes):
            y_box = y[..., box.top // 4 : (box.top + box.height) // 4, box.left // 4 : (box.left + box.width) // 4]
            noise = {"noise_coords": box.crop(coords), "seed": 0} if shared else {"seed": 100 + k}
            piece = sample_clip(model, op, y_box, box.crop(fwd), box.crop(bwd), config=config, **noise).frames
            pieces.append(piece)
            box.crop(out).add_(piece * box.crop(nearest == k))
        a, b = tiles.boxes[0], tiles.boxes[1]  # left and right neighbours: their shared columns
        shared_cols = slice(b.left - a.left, a.width)
        disagreement = (pieces[0][..., shared_cols] - pieces[1][..., : a.left + a.width - b.left]).square().mean().sqrt()
        return out, float(disagreement)

    untiled = sample_clip(model, op, y, fwd, bwd, seed=0, config=config).frames
    edges = tiles.edges(*SIZE)[0]  # where tiles begin and end: the middle of each overlap is cut
    cuts = [(a + b) // 2 for a, b in zip(edges[0::2], edges[1::2])]
    seam = {}
    for shared in (True, False):
        out, disagreement = tile_by_tile(shared)
        ratio = metrics.boundary_gradient(out, cuts, cuts) / metrics.boundary_gradient(untiled, cuts, cuts)
        seam[shared] = (ratio, disagreement)
    assert seam[True][0] <= 1.1 < seam[False][0], seam  # measured 1.01 and 1.25
    assert seam[False][1] > 3 * seam[True][1], seam  # measured 0.055 and 0.013


def test_a_crop_of_the_whole_frame_is_whole_frame_sampling():
    video, _, _, fwd, bwd = panned_clip(3)
    op = inverse.Inpainting(inverse.parse_mask("rect:0.4,0.4,0.6,0.6", SIZE, 3))
    prior = load_denoiser("default")
    config = SamplerConfig(steps=2)
    whole = sample_clip(prior, op, op.forward(video), fwd, bwd, seed=1, config=config).frames
    cropped = sample_crop(rtiles.Box(0, 0, *SIZE), prior, op, op.forward(video), fwd, bwd, seed=1, config=config).frames
    assert torch.equal(whole, cropped)
    with pytest.raises(ValueError, match="sampling in a crop is for inpainting"):
        sample_crop(rtiles.Box(0, 0, 64, 64), prior, inverse.SuperResolution(4), video[..., ::4, ::4], fwd, bwd, seed=1)


def test_a_small_hole_is_restored_in_a_crop_as_well_as_in_the_whole_frame():
    """A unit of 192² frames with a 19 × 38 px hole: `raywarp run`'s restore samples a 128²
    crop around it (the prior's native tile), the rest of the frame as observed; inside
    the hole it is as good as sampling the whole frame."""
    video, _, _, _, _ = panned_clip(3, (192, 192))
    frames = (video * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    hole = "rect:0.45,0.4,0.55,0.6"
    prior = load_denoiser("default").enable_tiling()
    out = {}
    for crop in (True, False):
        config = RunConfig(task="inpaint", mask=hole, inpaint_crop=crop, sampler=SamplerConfig(steps=2))
        m = rclip.measure(frames, config, 0, 3, (prior.scale_factor, prior.multiple))
        if crop:
            box = rclip.inpainting_crop(prior, m)
            assert (box.height, box.width) == (128, 128)
        fwd, bwd = rclip.flows(m, config)
        out[crop] = rclip.restore(prior, m, fwd, bwd, config, seed=0, start=0).astype(np.float64) / 255
    known = inverse.parse_mask(hole, (192, 192), 3)[:, 0].numpy() > 0.5
    truth = frames.astype(np.float64) / 255
    np.testing.assert_array_equal(out[True][known], truth[known])  # outside the holes: the observed frames
    assert not np.array_equal(out[True][~known], out[False][~known])  # the holes were sampled in the crop
    psnr = {c: -10 * np.log10(np.mean((out[c][~known] - truth[~known]) ** 2)) for c in out}
    assert psnr[True] > psnr[False] - 1.0, psnr


def test_frames_without_a_hole_are_output_as_observed_without_sampling():
    """A unit whose frames the mask leaves whole (here a hole outside the frame) is the
    measurement itself: no denoiser is called (None here would fail), the bytes are the
    input's, as sampling and projecting gave them."""
    video, _, _, _, _ = panned_clip(3, (32, 32))
    frames = (video * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    config = RunConfig(task="inpaint", mask="rect:200,200,210,210")
    m = rclip.measure(frames, config, 0, 3, (1, 4))
    np.testing.assert_array_equal(rclip.restore(None, m, None, None, config, seed=0, start=0), frames)
