"""The plan: units cover every frame exactly once, anchors line up, ids are deterministic."""

import numpy as np
import pytest
import torch

from raywarp import flow as rflow
from raywarp import noise as rnoise
from raywarp import synthetic
from raywarp.pipeline import clip as rclip
from raywarp.pipeline import plan as rplan
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.run import output_uris
from raywarp.sampler import SamplerConfig, chain_coords
from videos import probed


def video(frames, uri="/v/a.mp4", config=RunConfig()):
    return probed(frames, uri, rplan.video_id(uri, "123-4", config.hash()))


@pytest.mark.parametrize("frames", [1, 5, 16, 17, 28, 29, 100, 101])
@pytest.mark.parametrize("clip_len,overlap", [(16, 4), (9, 4), (5, 1), (12, 3)])
def test_units_own_every_frame_once(frames, clip_len, overlap):
    config = RunConfig(clip_len=clip_len, overlap=overlap)
    units = rplan.plan_video(video(frames, config=config), None, config)
    owned = sorted(f for u in units for f in range(u.out_start, u.out_stop))
    assert owned == list(range(frames))
    assert all(u.frames == u.out_stop - u.out_start > 0 for u in units)
    assert all(u.stop - u.start <= clip_len for u in units)
    by_id = {u.id: u for u in units}
    for u in units:
        assert u.start <= u.out_start < u.out_stop <= u.stop
        if u.start_anchor:  # the clip's first sampled frame is its seam's last frame
            seam = by_id[u.start_anchor]
            assert seam.kind == "seam" and seam.stop - 1 == u.start == u.out_start - 1
        if u.end_anchor:  # its last sampled frame is the next seam's first
            seam = by_id[u.end_anchor]
            assert seam.kind == "seam" and seam.start == u.stop - 1 == u.out_stop
    assert all((u.phase == 1) == (u.kind == "seam") for u in units)
    if frames <= clip_len:
        assert len(units) == 1 and not units[0].start_anchor and not units[0].end_anchor


def test_ids_are_deterministic_and_depend_on_config():
    a = rplan.plan_video(video(40), None, RunConfig())
    assert [u.id for u in a] == [u.id for u in rplan.plan_video(video(40), None, RunConfig())]
    other = RunConfig(sampler=SamplerConfig(steps=7))
    b = rplan.plan_video(video(40, config=other), None, other)
    assert not {u.id for u in a} & {u.id for u in b}
    assert len({u.id for u in a}) == len(a)


def test_config_hash_ignores_resources_only():
    base = RunConfig()
    assert RunConfig(max_actors=8, gpus_per_actor=0.5).hash() == base.hash()
    assert RunConfig(seed=1).hash() != base.hash()
    assert RunConfig.from_dict(base.to_dict()) == base


@pytest.mark.parametrize("kwargs,message", [
    ({"task": "inpaint"}, "--mask"),
    ({"clip_len": 8, "overlap": 4}, "clip_len"),
    ({"overlap": 0}, "overlap"),
    ({"task": "deblur"}, "task"),
    ({"min_actors": 3, "max_actors": 2}, "min_actors"),
])
def test_bad_config_is_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**kwargs)


def test_unit_noise_coordinates_continue_the_video_chain():
    """The scan of per-unit end maps gives every unit's first frame the coordinates a
    single chain over the whole video gives it, so a shared frame gets the same noise."""
    size, frames = (40, 48), 23
    motion = synthetic.affine_motion(size, shift=(0.5, -0.25), angle_deg=0.5)
    bwd = synthetic.affine_backward_flow(motion, size).expand(frames - 1, -1, -1, -1).double()
    config = RunConfig(clip_len=8, overlap=3)
    units = sorted(rplan.plan_video(video(frames, config=config), None, config), key=lambda u: (u.start, u.phase))
    assert all(a.stop - 1 == b.start for a, b in zip(units, units[1:]))  # each starts where the last ended
    whole = chain_coords(bwd, *size)
    maps = [rclip.end_map(bwd[u.start : u.stop - 1], size) for u in units]
    # Carrying affine coordinates is exact where a pixel's path back to frame 0 stays in the frame.
    tracked = [torch.ones(1, 1, *size, dtype=torch.float64)]
    for f in bwd:
        tracked.append(((rflow.warp(tracked[-1], f[None]) * rflow.in_frame(f[None])) > 0.999).double())
    first = rnoise.pixel_grid(*size)[0].numpy()
    for u, end in zip(units, maps):
        valid = tracked[u.start][0, 0].bool().numpy()
        assert valid.sum() > 50
        np.testing.assert_allclose(first[:, valid], whole[u.start].numpy()[:, valid], atol=1e-4)  # float32 end maps
        first = rclip.advance(first, end)
    assert np.abs(whole[-1] - whole[0]).max() > 10  # the motion is not trivial


def _noise_stats(x: torch.Tensor):
    """Per frame of GP noise (B, C, H, W): spatial variance, and the neighbour correlation
    along x and along y."""
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    var = x.pow(2).mean(dim=(1, 2, 3))
    return var, (x[..., 1:] * x[..., :-1]).mean(dim=(1, 2, 3)) / var, (x[..., 1:, :] * x[..., :-1, :]).mean(dim=(1, 2, 3)) / var


@pytest.mark.parametrize("zoom", [1.005, 1 / 1.005])
def test_noise_keeps_its_statistics_over_a_1000_frame_zoom(zoom):
    """Chained through a long zoom, GP coordinates shrink (zoom in) or grow (zoom out) by
    0.5% a frame: 0.007x or 146x after 1,000 frames. With the chain restarted where a unit
    would start outside NOISE_SPACING, every frame's noise stays within the statistics
    of a fresh frame at the band's edges, widened by one unit's own zoom."""
    size, frames, config = (24, 24), 1000, RunConfig()
    centre = torch.tensor([(size[1] - 1) / 2, (size[0] - 1) / 2], dtype=torch.float64).view(1, 2, 1, 1)
    bwd = ((rnoise.pixel_grid(*size) - centre) * (1 / zoom - 1)).expand(frames - 1, -1, -1, -1)  # exact flow
    units = sorted(rplan.plan_video(video(frames, config=config), None, config), key=lambda u: (u.start, u.phase))
    coords, first, restarts = {}, None, 0
    for u in units:  # as the pipeline does: each unit chains from `advance`'s coordinates
        flows = bwd[u.start : u.stop - 1]
        chained = chain_coords(flows, *size, start=None if first is None else torch.tensor(first)[None])
        coords.update({f: chained[f - u.start] for f in range(u.out_start, u.out_stop)})
        first = rclip.advance(first, rclip.end_map(flows, size))
        restarts += first is None
    features = rnoise.gp_features(3, 2, num_features=1000)
    var, cx, cy = _noise_stats(rnoise.gp_noise(features, torch.stack([coords[f] for f in range(0, frames, 3)])))

    drift = max(zoom, 1 / zoom) ** (config.clip_len - 1)  # what a unit may add to its start's spacing
    low, high = rclip.NOISE_SPACING
    grid = rnoise.pixel_grid(*size)
    _, *rough = _noise_stats(rnoise.gp_noise(features, grid * high * drift))
    _, *smooth = _noise_stats(rnoise.gp_noise(features, grid * low / drift))
    corr_low, corr_high = float(min(rough[0], rough[1])) - 0.03, float(max(smooth[0], smooth[1])) + 0.03
    assert restarts >= 15
    assert 0.85 <= float(var.min()) and float(var.max()) <= 1.15, (var.min(), var.max())
    assert corr_low <= float(torch.minimum(cx, cy).min()) and float(torch.maximum(cx, cy).max()) <= corr_high

    # Without restarts, the last frame's noise is far outside those bounds: near constant
    # zooming in, near white zooming out.
    unbroken = chain_coords(bwd, *size)[-1:]
    var_end, cx_end, _ = _noise_stats(rnoise.gp_noise(features, unbroken))
    assert float(cx_end) > corr_high + 0.1 if zoom > 1 else float(cx_end) < corr_low - 0.05, float(cx_end)


@pytest.mark.parametrize("uris", [
    ["/in/a/clip.mp4", "/in/b/clip-2.mp4", "/in/c/clip.mp4"],  # once made the old suffix scheme loop forever
    ["/in/clip.mp4", "/in/clip.mkv", "/in/clip-1.mp4", "/in/clip-2.mp4", "/in/x/clip.mp4"],
    ["s3://bucket/reels/r1/film.mov", "s3://bucket/reels/r2/film.mov"],
    ["/local/film.mp4", "s3://bucket/film.mp4"],
    ["/only/one.mp4"],
])
def test_output_names_mirror_the_sources_and_are_unique_in_any_order(uris):
    out = output_uris("/dst", uris)
    assert sorted(out) == sorted(uris) and len(set(out.values())) == len(uris)
    assert all(o.startswith("/dst/") and o.endswith(".mp4") and "//" not in o[1:] for o in out.values())
    assert output_uris("/dst", uris[::-1]) == out


def test_output_names_keep_the_folder_structure():
    out = output_uris("s3://b/out/", ["s3://b/in/r1/a.mov", "s3://b/in/r2/a.mov", "s3://b/in/b.mkv"])
    assert out == {"s3://b/in/r1/a.mov": "s3://b/out/r1/a.mp4", "s3://b/in/r2/a.mov": "s3://b/out/r2/a.mp4",
                   "s3://b/in/b.mkv": "s3://b/out/b.mp4"}


def test_a_unit_with_a_pair_without_flow_restarts_the_chain():
    size = (6, 8)
    bwd = torch.full((3, 2, *size), -1.0, dtype=torch.float64)
    bwd[1] = float("nan")  # frames 1 and 2 have no flow between them
    coords = chain_coords(bwd, *size, first_index=10)
    torch.testing.assert_close(coords[1], rnoise.pixel_grid(*size)[0] - 1)  # frame 1's pixels came from p − 1
    torch.testing.assert_close(coords[2], rnoise.restart_coords(*size, 12)[0])  # frame 12 of its shot
    torch.testing.assert_close(coords[3], coords[2] - 1)  # and chains on from there
    assert not torch.equal(rnoise.restart_coords(*size, 12), rnoise.restart_coords(*size, 13))
    # Its last frame has no position in its first: the next unit restarts on the grid.
    end = rclip.end_map(bwd, size)
    assert np.isnan(end).all()
    assert rclip.advance(None, end) is None
    assert rclip.advance(None, rclip.end_map(bwd[2:], size)) is not None


@pytest.mark.parametrize("video_frames", [20, 400])
def test_a_units_dir_mask_costs_its_own_frames_whatever_the_video_length(video_frames, tmp_path, monkeypatch):
    """A unit reads its own mask files only: as many for a 400-frame film as for 20."""
    import cv2

    from raywarp import inverse

    for t in range(video_frames):
        cv2.imwrite(str(tmp_path / f"{t:05d}.png"), np.full((8, 10), 255 * (t % 2), np.uint8))
    read = []
    real = inverse._read_hole
    monkeypatch.setattr(inverse, "_read_hole", lambda path, *a: read.append(path) or real(path, *a))
    config = RunConfig(task="inpaint", mask=f"dir:{tmp_path}")
    m = rclip.measure(np.zeros((5, 8, 10, 3), np.uint8), config, 10, video_frames, (1, 1))
    assert [p.rsplit("/", 1)[1] for p in read] == [f"{t:05d}.png" for t in range(10, 15)]
    assert [float(m.op.known(m.y)[t].mean()) for t in range(5)] == [1.0, 0.0, 1.0, 0.0, 1.0]  # frames 10..14
