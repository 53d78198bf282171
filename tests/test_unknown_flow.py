"""Clips whose motion cannot be found are restored, never failed: a fuzz of 200 random
tiny clips through the worker's flows and sample path, and the reported clip end to end.

The fuzz draws, seeded: a photograph and a crop of 8–48 px; motion up to 6 px a frame
with rotation and zoom; fades, flashes, uniform and noise frames; SR ×2 and inpainting
with holes of up to 90 % of the frame; `warped` and `white-warped`. Each clip is planned
as the pipeline plans it (some cross a seam) and goes through `UnitWorker.flows` and
`UnitWorker.sample` in the pipeline's order (`bench.pipeline.restore_units`) with a tiny
model, one step.
"""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from raywarp import synthetic
from raywarp.cli import main as cli_main
from raywarp.bench.pipeline import restore_units
from raywarp.pipeline import plan as rplan
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.encode import encode_video
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.records import Decoded
from raywarp.pipeline.stages import UnitWorker
from raywarp.report import write_report
from raywarp.sampler import SamplerConfig
from videos import probed

CLIPS = 200
PHOTOS = synthetic.TRAIN_PHOTOS + synthetic.HELDOUT_PHOTOS
CLIP_LEN, OVERLAP = 5, 1  # clips of more than 5 frames cross a seam



@pytest.fixture(scope="module")
def micro_model(tmp_path_factory) -> str:
    """A conditional pixel UNet of a few thousand parameters: the fuzz tests the path, not the model."""
    from diffusers import DDIMScheduler, UNet2DModel

    root = tmp_path_factory.mktemp("micro_model")
    torch.manual_seed(0)
    UNet2DModel(in_channels=7, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")
                ).save_pretrained(root)
    DDIMScheduler(prediction_type="sample").save_pretrained(root)
    return str(root)


def random_clip(rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8: a moving crop of a photograph, with the events that defeat flow."""
    frames = int(rng.choice([2, 3, 4, 5, 7]))
    size = (int(rng.integers(8, 49)), int(rng.integers(8, 49)))
    shift = rng.uniform(-1, 1, 2)
    shift *= rng.uniform(0, 6) / max(np.hypot(*shift), 1e-6)  # up to 6 px a frame
    motion = synthetic.affine_motion(size, shift=tuple(shift), angle_deg=rng.uniform(-5, 5), zoom=rng.uniform(0.9, 1.1))
    video, _ = synthetic.affine_video(str(rng.choice(PHOTOS)), frames, size, motion, zoom=rng.uniform(0.5, 4))
    x = video.numpy()
    t = int(rng.integers(frames))
    event = rng.choice(["none", "fade", "flash", "uniform", "noise"])
    if event == "fade":
        x = x * np.linspace(1, rng.uniform(0, 0.3), frames).reshape(-1, 1, 1, 1)
    elif event == "flash":
        x[t] = np.minimum(1, x[t] + rng.uniform(0.5, 1))
    elif event == "uniform":
        x[t] = rng.uniform(0, 1, (3, 1, 1))
    elif event == "noise":
        x[t] = rng.uniform(0, 1, x[t].shape)
    return (x.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def random_config(rng: np.random.Generator, model: str) -> RunConfig:
    # Cheap where it changes nothing the fuzz tests: 64 GP features, not 3,000, and most
    # pairs densified by Laplace (which pairs have flow is decided before densification).
    sampler = SamplerConfig(mode=str(rng.choice(["warped", "white-warped"])), steps=1, num_features=64)
    common = dict(model=model, sampler=sampler, clip_len=CLIP_LEN, overlap=OVERLAP,
                  densify_method="neuroexplicit" if rng.random() < 0.2 else "laplace")
    if rng.random() < 0.5:
        return RunConfig(task="sr", scale=2, **common)
    area = rng.uniform(0.05, 0.9)  # of the frame, in a rectangle of random shape
    w = rng.uniform(area, 1)
    h = area / w
    x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
    return RunConfig(task="inpaint", mask=f"rect:{x0:.4f},{y0:.4f},{x0 + w:.4f},{y0 + h:.4f}", **common)


@pytest.mark.slow
def test_random_tiny_clips_are_restored_never_failed(micro_model, tmp_path):
    rng = np.random.default_rng(2026)
    worker = UnitWorker(RunConfig(model=micro_model).to_dict(), str(tmp_path), None, attempt=1)
    fallbacks = failures = 0
    for i in range(CLIPS):
        frames = random_clip(rng)
        config = random_config(rng, micro_model)
        worker.config = config  # this clip's task, mask and mode; what the worker loaded is the model's alone
        units = rplan.plan_video(probed(len(frames), f"fuzz/clip{i}", f"clip{i}"), None, config)
        decode = lambda u: (frames[u.start : u.stop], Decoded(0.0, 0.0))  # noqa: E731
        for row in restore_units(worker, units, decode):
            failures += row.status != "done"
            assert row.status == "done", (i, config, frames.shape, row.error)
            metrics = row.metrics
            assert metrics["measurement_error"] < 0.05, (i, config, metrics)
            fallbacks += bool(metrics["fallback_pairs"])
    assert failures == 0
    assert fallbacks >= CLIPS // 10, fallbacks  # the fuzz does reach pairs without flow


def test_the_reported_clip_gives_a_done_video_and_reports_its_fallback(local_ray, tmp_path):
    """The issue's reproduction: the rocket panned 2 px a frame diagonally, 6 frames of
    16×24, H.264, SR ×2, 1 step: its last pairs have no trusted flow."""
    rocket = synthetic.load_photo("rocket")
    frames = np.stack([rocket[32 + 2 * t : 48 + 2 * t, 20 + 2 * t : 44 + 2 * t] for t in range(6)])
    src = tmp_path / "src"
    src.mkdir()
    encode_video(iter((frames * 255).round().astype(np.uint8)), str(src / "rocket.mp4"), Fraction(25))
    dst = tmp_path / "out"
    code = cli_main(["run", str(src), "--out", str(dst), "--task", "sr", "--scale", "2", "--steps", "1",
                     "--clip-len", "6", "--overlap", "2", "--max-actors", "1"])
    assert code == 0
    latest = Manifest(str(dst)).latest()
    assert [r["status"] for r in latest.values() if r["kind"] == "video"] == ["done"]
    pairs = sorted(p for r in latest.values() if r["kind"] != "video"
                   for p in json.loads(r["metrics"] or "{}").get("fallback_pairs", []))
    assert pairs and all(0 <= p < 5 for p in pairs)
    page = open(write_report(str(dst))).read()
    listed = ", ".join(f"{p}–{p + 1}" for p in pairs)
    assert f"{len(pairs)} frame pair(s) with no motion found between them" in page and listed in page

