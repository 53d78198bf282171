"""The warped sampler with tiny diffusers models: equivariance, anchors, determinism, bad input."""

import pytest
import torch
from diffusers import DDIMScheduler

from raywarp import flow as rflow
from raywarp import inverse, metrics, noise, synthetic
from raywarp.flow import resize_flow
from raywarp.models import Denoiser, PixelDenoiser, load_denoiser, tiny_latent_pipeline, tiny_pixel_unet
from raywarp.sampler import SamplerConfig, ClipFlows, chain_coords, sample_clip, self_guidance_energy, start_timesteps


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def denoiser():
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    return PixelDenoiser(tiny_pixel_unet(conditional=True), sched.alphas_cumprod, "epsilon")


def video_and_flows(frames=4, size=(32, 32), velocity=(4.0, 0.0), origin=(200.0, 150.0)):
    video, fwd = synthetic.translate_video("astronaut", frames, size, velocity, origin=origin)
    bwd = -torch.tensor(velocity).view(1, 2, 1, 1).expand(frames - 1, 2, *size).clone()
    return video, fwd, bwd


def test_deterministic_and_seeded(denoiser):
    video, fwd, bwd = video_and_flows()
    op = inverse.SuperResolution(4, "bicubic")
    y = op.forward(video)
    cfg = SamplerConfig(mode="warped", steps=3, batch_size=2)
    a = sample_clip(denoiser, op, y, fwd, bwd, seed=7, config=cfg)
    b = sample_clip(denoiser, op, y, fwd, bwd, seed=7, config=cfg)
    c = sample_clip(denoiser, op, y, fwd, bwd, seed=8, config=cfg)
    assert torch.equal(a.frames, b.frames)
    assert not torch.equal(a.frames, c.frames)
    assert a.frames.shape == video.shape


def test_outputs_agree_with_the_measurements(denoiser):
    video, fwd, bwd = video_and_flows()
    op = inverse.SuperResolution(4, "bicubic")
    y = op.forward(video)
    out = sample_clip(denoiser, op, y, fwd, bwd, seed=0, config=SamplerConfig(mode="gp-warp", steps=3)).frames
    assert op.measurement_error(out, y) < 2e-3  # to within the final clamp to [0, 1]


def test_frame_batches_do_not_change_the_result(denoiser):
    # Streaming frames through the denoiser in smaller batches must not change the answer.
    video, fwd, bwd = video_and_flows(frames=5)
    op = inverse.SuperResolution(4, "area")
    y = op.forward(video)
    big = sample_clip(denoiser, op, y, fwd, bwd, seed=1, config=SamplerConfig(steps=3, batch_size=8))
    small = sample_clip(denoiser, op, y, fwd, bwd, seed=1, config=SamplerConfig(steps=3, batch_size=2))
    torch.testing.assert_close(big.frames, small.frames, atol=1e-4, rtol=0)


class ConvDenoiser(Denoiser):
    """A translation-equivariant denoiser: three plain convolutions (no normalisation, no
    attention, both of which mix the whole frame), so any loss of equivariance is the
    sampler's own."""

    space, channels, scale_factor, multiple, conditional = "pixel", 3, 1, 1, True

    def __init__(self):
        sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        super().__init__(sched.alphas_cumprod, "epsilon", "cpu", torch.float32)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(9, 16, 3, padding=1), torch.nn.Tanh(),
                                       torch.nn.Conv2d(16, 3, 3, padding=1))

    def encode(self, images):
        return images * 2 - 1

    def decode(self, u):
        return ((u + 1) / 2).clamp(0, 1)

    def condition(self, y, info):
        return info["baseline"] * 2 - 1

    def _network(self, u, t, cond):
        return self.net(torch.cat([u, cond, u * (t / 1000)], 1))


@pytest.mark.parametrize("mode, tolerance", [("gp-warp", 1e-5), ("warped", 1e-2)])
def test_equivariant_under_integer_shifts(mode, tolerance):
    # The same scene seen 8 px further right: the restored video is the same, shifted,
    # away from the borders. gp-warp is exact; warped is exact but for its per-frame
    # step normalisation, a sum over the whole frame that the borders enter.
    den = ConvDenoiser()
    shift = 8
    video, fwd, bwd = video_and_flows(frames=3, size=(96, 96))
    moved, _, _ = video_and_flows(frames=3, size=(96, 96), origin=(200.0 - shift, 150.0))
    assert torch.equal(moved[..., shift:], video[..., :-shift])
    op = inverse.SuperResolution(4, "area")
    cfg = SamplerConfig(mode=mode, steps=3, guidance=0.5)
    grid = noise.pixel_grid(96, 96)
    out = sample_clip(den, op, op.forward(video), fwd, bwd, 3, cfg, noise_coords=chain_coords(bwd.double(), 96, 96, grid))
    start = grid - torch.tensor([shift, 0.0], dtype=grid.dtype).view(1, 2, 1, 1)
    out_moved = sample_clip(den, op, op.forward(moved), fwd, bwd, 3, cfg,
                            noise_coords=chain_coords(bwd.double(), 96, 96, start))
    c = slice(40, 56)
    diff = (out_moved.frames[..., c, c] - out.frames[..., c, slice(40 - shift, 56 - shift)]).abs().max()
    assert diff < tolerance
    unshifted_noise = sample_clip(den, op, op.forward(moved), fwd, bwd, 3, cfg).frames
    assert (unshifted_noise[..., c, c] - out.frames[..., c, slice(40 - shift, 56 - shift)]).abs().max() > 10 * tolerance


def test_warped_mode_is_temporally_consistent(denoiser):
    video, fwd, bwd = video_and_flows(frames=4)
    op = inverse.SuperResolution(4, "bicubic")
    y = op.forward(video)
    errors = {}
    for mode in ("independent", "gp-warp", "warped"):
        out = sample_clip(denoiser, op, y, fwd, bwd, 0, SamplerConfig(mode=mode, steps=4, guidance=1.0)).frames
        errors[mode] = float(metrics.warping_error(out, fwd, bwd))
    assert errors["gp-warp"] < errors["independent"]
    assert errors["warped"] < errors["gp-warp"]


def test_anchors_are_honoured(denoiser):
    video, fwd, bwd = video_and_flows(frames=4)
    op = inverse.SuperResolution(4, "bicubic")
    y = op.forward(video)
    cfg = SamplerConfig(mode="warped", steps=3)
    # Anchors from neighbouring clips: their edge frames are our first and last frames.
    left = sample_clip(denoiser, op, y[:2], fwd[:1], bwd[:1], 0, cfg)
    right = sample_clip(denoiser, op, y[2:], fwd[2:], bwd[2:], 0, cfg)
    mine = sample_clip(denoiser, op, y[1:3], fwd[1:2], bwd[1:2], 0, cfg,
                       frame_index=[1, 2], start_anchor=left.frames[-1], end_anchor=right.frames[0])
    torch.testing.assert_close(mine.frames[0], left.frames[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.frames[1], right.frames[0], atol=1e-5, rtol=0)


def test_latent_models_sample(tmp_path):
    den = load_denoiser(str(tiny_latent_pipeline("sd", tmp_path / "sd")))
    video, fwd, bwd = video_and_flows(frames=3, size=(32, 32))
    op = inverse.SuperResolution(4, "bicubic")
    y = op.forward(video)
    grid = (32 // den.scale_factor, 32 // den.scale_factor)
    with pytest.raises(ValueError, match="model's grid"):  # output-resolution flows
        sample_clip(den, op, y, fwd, bwd, 0, SamplerConfig(mode="warped", steps=2))
    out = sample_clip(den, op, y, resize_flow(fwd, grid), resize_flow(bwd, grid), 0, SamplerConfig(mode="warped", steps=2))
    assert out.frames.shape == video.shape and torch.isfinite(out.frames).all()
    assert op.measurement_error(out.frames, y) < 2e-3


def test_bad_input_is_named(denoiser):
    video, fwd, bwd = video_and_flows(frames=3)
    op = inverse.SuperResolution(4, "bicubic")
    y = op.forward(video)
    with pytest.raises(ValueError, match="flows_fwd"):
        sample_clip(denoiser, op, y, fwd[:1], bwd, 0)
    with pytest.raises(ValueError, match="empty|observations"):
        sample_clip(denoiser, op, y[:0], fwd[:0], bwd[:0], 0)
    with pytest.raises(ValueError, match="observations"):
        sample_clip(denoiser, op, y * float("nan"), fwd, bwd, 0)
    with pytest.raises(ValueError, match="flows_fwd"):  # flows at LR size: wrong scale
        sample_clip(denoiser, op, y, fwd[..., :8, :8], bwd[..., :8, :8], 0)
    with pytest.raises(ValueError, match="mode"):
        SamplerConfig(mode="magic")
    with pytest.raises(ValueError, match="anchor"):
        sample_clip(denoiser, op, y, fwd, bwd, 0, SamplerConfig(steps=2), start_anchor=torch.zeros(3, 3, 32, 32))


def count_network_frames(denoiser) -> list[int]:
    """Wrap the denoiser's network call; the list collects the frames of every call."""
    calls, network = [], denoiser.unet_call

    def counted(x, *args, **kwargs):
        calls.append(x.shape[0])
        return network(x, *args, **kwargs)

    denoiser.unet_call = counted
    return calls


@pytest.mark.parametrize("batch_size, extra", [(8, 0), (2, 2)])
@pytest.mark.parametrize("mode, method", [("gp-warp", "gradient"), ("warped", "gradient"), ("warped", "x0")])
def test_every_frame_goes_through_the_network_once_per_step(mode, method, batch_size, extra):
    # Self-guidance reuses the batch's own predictions for its neighbours: per step, each
    # frame once, plus one lookahead frame per batch boundary (5 frames in batches of 2: 2).
    den = PixelDenoiser(tiny_pixel_unet(conditional=True), DDIMScheduler().alphas_cumprod, "epsilon")
    calls = count_network_frames(den)
    video, fwd, bwd = video_and_flows(frames=5)
    op = inverse.SuperResolution(4, "bicubic")
    cfg = SamplerConfig(mode=mode, guidance_method=method, steps=3, batch_size=batch_size)
    sample_clip(den, op, op.forward(video), fwd, bwd, 0, cfg)
    assert sum(calls) == len(start_timesteps(den, cfg)) * (5 + (extra if mode == "warped" else 0))


def test_the_energy_of_a_batch_is_its_slice_of_the_clip_energy():
    # Frames of an exact translation: zero inconsistency inside the frame; a batch's
    # energies, given its neighbours, equal those frames' energies in the whole clip.
    video, fwd, bwd = video_and_flows(frames=5, velocity=(2.0, 1.0))
    clip = ClipFlows(fwd, bwd, "cpu")
    x0 = video.clone()
    x0[2] += 0.2 * torch.rand_like(x0[2])  # one inconsistent frame
    prev, nxt = torch.cat([x0[:1], x0[:-1]]), torch.cat([x0[1:], x0[-1:]])
    whole = self_guidance_energy(x0, prev, nxt, 0, clip)
    part = self_guidance_energy(x0[1:4], x0[0:3], x0[2:5], 1, clip)
    torch.testing.assert_close(part, whole[1:4])
    assert whole[2] > 10 * whole[0] and whole[1] > 10 * whole[0] and whole[3] > 10 * whole[4]


def test_x0_guidance_is_temporally_consistent_at_no_backward_pass(denoiser):
    video, fwd, bwd = video_and_flows(frames=4)
    op = inverse.SuperResolution(4, "bicubic")
    y = op.forward(video)
    errors = {}
    for mode, method in (("gp-warp", "gradient"), ("warped", "x0"), ("white-warp", "x0"), ("white-warped", "x0")):
        cfg = SamplerConfig(mode=mode, guidance_method=method, steps=4, guidance=1.0)
        errors[mode] = float(metrics.warping_error(sample_clip(denoiser, op, y, fwd, bwd, 0, cfg).frames, fwd, bwd))
    assert errors["warped"] < errors["gp-warp"]
    assert errors["white-warped"] < errors["white-warp"]


def test_white_warp_is_equivariant_under_integer_shifts():
    # As gp-warp: the noise is a function of the coordinates, so a shifted scene with
    # shifted coordinates restores to the shifted result, exactly.
    den = ConvDenoiser()
    shift = 8
    video, fwd, bwd = video_and_flows(frames=3, size=(96, 96))
    moved, _, _ = video_and_flows(frames=3, size=(96, 96), origin=(200.0 - shift, 150.0))
    op = inverse.SuperResolution(4, "area")
    cfg = SamplerConfig(mode="white-warp", steps=3)
    grid = noise.pixel_grid(96, 96)
    out = sample_clip(den, op, op.forward(video), fwd, bwd, 3, cfg, noise_coords=chain_coords(bwd.double(), 96, 96, grid))
    start = grid - torch.tensor([shift, 0.0], dtype=grid.dtype).view(1, 2, 1, 1)
    out_moved = sample_clip(den, op, op.forward(moved), fwd, bwd, 3, cfg, noise_coords=chain_coords(bwd.double(), 96, 96, start))
    c = slice(40, 56)
    assert (out_moved.frames[..., c, c] - out.frames[..., c, slice(40 - shift, 56 - shift)]).abs().max() < 1e-5


def test_flows_reestimated_on_the_prediction_replace_wrong_ones():
    """Guidance along the flows the sampler is given, or along flows estimated again on
    its own prediction: handed no motion at all (zero flows) for a translating clip, the
    re-estimated flows find the motion, and the frames come out more consistent."""
    prior = load_denoiser("default")
    video, fwd, bwd = video_and_flows(frames=4, size=(48, 48), velocity=(2.0, 0.0))
    op = inverse.Inpainting(inverse.parse_mask("rect:0.3,0.3,0.7,0.7", (48, 48), 4))
    y = op.degrade(video)
    wrong = torch.zeros_like(fwd)
    errors = {}
    for at in (0.0, 0.5):
        cfg = SamplerConfig(mode="warped", steps=8, reestimate_flow_at=at)
        out = sample_clip(prior, op, y, wrong, wrong, seed=0, config=cfg).frames
        errors[at] = float(metrics.warping_error(out, fwd, bwd))
    assert errors[0.5] < 0.8 * errors[0.0], errors


def test_a_translation_by_whole_input_pixels_comes_out_nearly_exact_with_estimated_flow():
    """SR ×4 of a clip moving 4 output (1 input) pixels per frame: the inputs are shifted
    copies, so the flow estimated on the baseline, as the pipeline does, is nearly exact,
    and `warped` leaves a small fraction of per-frame sampling's warping error."""
    prior = load_denoiser("default")
    video, fwd_true, bwd_true = video_and_flows(frames=4, size=(48, 48), velocity=(4.0, 0.0))
    op = inverse.SuperResolution(4, "bicubic")
    y = op.degrade(video)
    fwd, bwd = rflow.restoration_flows(op.baseline(y), op.known(y))
    assert float(metrics.epe(fwd, fwd_true)) < 0.3
    errors = {}
    for mode in ("independent", "warped"):
        out = sample_clip(prior, op, y, fwd, bwd, seed=0, config=SamplerConfig(mode=mode, steps=20)).frames
        errors[mode] = float(metrics.warping_error(out, fwd_true, bwd_true))
    assert errors["warped"] < 0.2 * errors["independent"], errors


def test_a_static_hole_over_a_pan_is_copied_from_the_frames_that_saw_it():
    """Inpainting a static hole over a clip panning 4 px per frame, with flow estimated as
    the pipeline does: `warped` copies what the other frames saw (propagation) and comes
    out far more consistent and closer to the truth than without it."""
    prior = load_denoiser("default")
    video, fwd_true, bwd_true = video_and_flows(frames=4, size=(48, 48), velocity=(4.0, 0.0))
    op = inverse.Inpainting(inverse.parse_mask("rect:0.35,0.3,0.65,0.6", (48, 48), 4))
    y = op.degrade(video)
    fwd, bwd = rflow.restoration_flows(op.baseline(y), op.known(y))
    results = {}
    for propagate in (False, True):
        cfg = SamplerConfig(mode="warped", steps=10, propagate=propagate)
        out = sample_clip(prior, op, y, fwd, bwd, seed=0, config=cfg).frames
        assert torch.equal(out * op.known(y), y * op.known(y))  # observed pixels kept either way
        results[propagate] = (float(metrics.warping_error(out, fwd_true, bwd_true)), float(metrics.psnr(out, video)))
    assert results[True][0] < 0.3 * results[False][0], results
    assert results[True][1] > results[False][1] + 3, results


@pytest.mark.parametrize("mode", ["warped", "white-warped"])
def test_a_pair_without_flow_splits_the_clip(denoiser, mode):
    # Frames 1 and 2 have no flow between them (NaN): no guidance across the pair and a
    # fresh noise chain after it, so the clip comes out as its two halves sampled alone,
    # the second on the coordinates the chain restarts on.
    video, fwd, bwd = video_and_flows(frames=4)
    fwd[1], bwd[1] = float("nan"), float("nan")
    op = inverse.SuperResolution(4, "bicubic")
    y = op.forward(video)
    cfg = SamplerConfig(mode=mode, steps=3, batch_size=8)
    whole = sample_clip(denoiser, op, y, fwd, bwd, seed=3, config=cfg).frames
    first = sample_clip(denoiser, op, y[:2], fwd[:1], bwd[:1], seed=3, config=cfg).frames
    restarted = chain_coords(bwd[2:].double(), 32, 32, start=noise.restart_coords(32, 32, 2))
    second = sample_clip(denoiser, op, y[2:], fwd[2:], bwd[2:], seed=3, config=cfg, frame_index=torch.arange(2, 4),
                         noise_coords=restarted).frames
    torch.testing.assert_close(whole, torch.cat([first, second]), atol=1e-4, rtol=0)
    coupled = sample_clip(denoiser, op, y, *video_and_flows(frames=4)[1:], seed=3, config=cfg).frames
    assert (coupled - whole).abs().max() > 1e-3  # with the flow, the halves do affect each other


def test_a_pair_partly_without_flow_is_refused(denoiser):
    video, fwd, bwd = video_and_flows(frames=3)
    fwd[0, :, :4] = float("nan")
    op = inverse.SuperResolution(4, "bicubic")
    with pytest.raises(ValueError, match="flows_fwd: NaN in part of a pair"):
        sample_clip(denoiser, op, op.forward(video), fwd, bwd, seed=0, config=SamplerConfig(steps=1))


def test_the_callback_sees_every_step_and_reestimation_uses_the_given_estimator(denoiser):
    video, fwd, bwd = video_and_flows(frames=3)
    op = inverse.SuperResolution(4, "bicubic")
    seen, asked = [], []

    def reestimate(images, observed, size, detail):
        asked.append((tuple(images.shape), tuple(observed.shape), size, detail))
        return fwd, bwd

    cfg = SamplerConfig(mode="warped", steps=4, reestimate_flow_at=0.5)
    out = sample_clip(denoiser, op, op.forward(video), fwd, bwd, seed=0, config=cfg,
                      callback=lambda d: seen.append((d["i"], d["t"], tuple(d["x0"].shape))), reestimate=reestimate)
    assert [i for i, _, _ in seen] == [0, 1, 2, 3] and all(shape == (3, 3, 32, 32) for *_, shape in seen)
    assert [t for _, t, _ in seen] == sorted((t for _, t, _ in seen), reverse=True)
    assert asked == [((3, 3, 32, 32), (3, 1, 32, 32), (32, 32), 4)]  # once, halfway, at the SR detail
    assert out.frames.shape == video.shape
