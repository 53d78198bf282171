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
from raywarp.sampler import SamplerConfig, chain_coords


def video(frames, uri="/v/a.mp4", config=RunConfig()):
    return {"uri": uri, "frames": frames, "video_id": rplan.video_id(uri, "123-4", config.hash())}


@pytest.mark.parametrize("frames", [1, 5, 16, 17, 28, 29, 100, 101])
@pytest.mark.parametrize("clip_len,overlap", [(16, 4), (9, 4), (5, 1), (12, 3)])
def test_units_own_every_frame_once(frames, clip_len, overlap):
    config = RunConfig(clip_len=clip_len, overlap=overlap)
    units = rplan.plan_video(video(frames, config=config), config)
    owned = sorted(f for u in units for f in range(u["out_start"], u["out_stop"]))
    assert owned == list(range(frames))
    assert all(u["frames"] == u["out_stop"] - u["out_start"] > 0 for u in units)
    assert all(u["stop"] - u["start"] <= clip_len for u in units)
    by_id = {u["id"]: u for u in units}
    for u in units:
        assert u["start"] <= u["out_start"] < u["out_stop"] <= u["stop"]
        if u["start_anchor"]:  # the clip's first sampled frame is its seam's last frame
            seam = by_id[u["start_anchor"]]
            assert seam["kind"] == "seam" and seam["stop"] - 1 == u["start"] == u["out_start"] - 1
        if u["end_anchor"]:  # its last sampled frame is the next seam's first
            seam = by_id[u["end_anchor"]]
            assert seam["kind"] == "seam" and seam["start"] == u["stop"] - 1 == u["out_stop"]
    assert all((u["phase"] == 1) == (u["kind"] == "seam") for u in units)
    if frames <= clip_len:
        assert len(units) == 1 and not units[0]["start_anchor"] and not units[0]["end_anchor"]


def test_ids_are_deterministic_and_depend_on_config():
    a = rplan.plan_video(video(40), RunConfig())
    assert [u["id"] for u in a] == [u["id"] for u in rplan.plan_video(video(40), RunConfig())]
    other = RunConfig(sampler=SamplerConfig(steps=7))
    b = rplan.plan_video(video(40, config=other), other)
    assert not {u["id"] for u in a} & {u["id"] for u in b}
    assert len({u["id"] for u in a}) == len(a)


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
    units = sorted(rplan.plan_video(video(frames, config=config), config), key=lambda u: (u["start"], u["phase"]))
    assert all(a["stop"] - 1 == b["start"] for a, b in zip(units, units[1:]))  # each starts where the last ended
    whole = chain_coords(bwd, *size)
    maps = [rclip.end_map(bwd[u["start"] : u["stop"] - 1], size) for u in units]
    # Carrying affine coordinates is exact where a pixel's path back to frame 0 stays in the frame.
    tracked = [torch.ones(1, 1, *size, dtype=torch.float64)]
    for f in bwd:
        tracked.append(((rflow.warp(tracked[-1], f[None]) * rflow.in_frame(f[None])) > 0.999).double())
    first = rnoise.pixel_grid(*size)[0].numpy()
    for u, end in zip(units, maps):
        valid = tracked[u["start"]][0, 0].bool().numpy()
        assert valid.sum() > 50
        np.testing.assert_allclose(first[:, valid], whole[u["start"]].numpy()[:, valid], atol=1e-4)  # float32 end maps
        first = rclip.advance(first, end)
    assert np.abs(whole[-1] - whole[0]).max() > 10  # the motion is not trivial
