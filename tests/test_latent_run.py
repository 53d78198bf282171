"""Latent diffusion checkpoints through the whole pipeline: `raywarp run --model DIR` on a
real local Ray, with tiny random-weight SD folders (`raywarp.models.tiny_latent_pipeline`).

Both run tiled (`--tile` smaller than the frame), the UNet and the VAE. The models' outputs are noise-like, so what is checked is what holds whatever the
weights: every unit and video is done, the outputs have the right frames and size, they
agree with the measurements (exactly in the payloads, up to H.264 in the videos), and
flows, end maps and noise coordinates live on the model's u-space grid (output size /
VAE factor, padded to the model's multiple), not at output resolution.

Inputs are lossless (FFV1), so the decoded input frames are exactly the ones written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raywarp import inverse, synthetic
from raywarp.cli import main as cli_main
from raywarp.models import geometry, tiny_latent_pipeline
from raywarp.pipeline.decode import decode_span
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.source import probe
from videos import write_lossless

FRAMES = 8
# clip_len 5, overlap 1 on 8 frames: clip [0, 5), seam [4, 5), clip [4, 8); the seam
# anchors the last frame of the first clip and the first frame of the second. No --mode:
# folders without a raywarp_noise.json are white-noise models, sampled white-warped.
LAYOUT = ["--clip-len", "5", "--overlap", "1", "--steps", "2", "--max-actors", "1"]


pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def latent_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("latent_models")
    return {kind: tiny_latent_pipeline(kind, root / kind) for kind in ("upscale", "inpaint")}


def source_video(root: Path, size, shift) -> tuple[Path, np.ndarray]:
    """A lossless video of FRAMES frames of a photo moving by `shift` (dx, dy) px per frame."""
    video, _ = synthetic.affine_video("coffee", FRAMES, size, synthetic.affine_motion(size, shift=shift))
    frames = (video * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    root.mkdir()
    return write_lossless(root / "v.mkv", frames), frames


def run_cli(src: Path, dst: Path, *args: str) -> int:
    return cli_main(["run", str(src.parent), "--out", str(dst), *args, *LAYOUT])


def check_units(dst: Path, grid: tuple[int, int], motion: tuple[float, float]) -> dict[str, np.ndarray]:
    """Every unit done, a seam among them; each unit's end map on the u-space `grid`,
    displaced by the u-space `motion` (dx, dy per frame) times its frame steps. Returns
    the payload frames of each unit, by id, in output order."""
    manifest = Manifest(str(dst))
    assert manifest.run_info()["config"]["sampler"]["mode"] == "white-warped"
    assert manifest.run_info()["config"]["tile"] is not None
    latest = manifest.latest()
    units = sorted(manifest.read_table("clips").to_pylist(), key=lambda u: u["out_start"])
    assert [u["kind"] for u in units] == ["clip", "seam", "clip"]
    assert units[0]["end_anchor"] == units[1]["id"] == units[2]["start_anchor"]
    assert all(latest[u["id"]]["status"] == "done" for u in units), [latest[u["id"]]["error"] for u in units]
    assert [r["status"] for r in latest.values() if r["kind"] == "video"] == ["done"]
    for u in units:
        end = manifest.get_arrays(f"endmap/{u['id']}")["end_map"]
        assert end.shape == (2, *grid)
        # The interior's median (the borders are mirrored padding and pixels leaving the
        # frame), measured within 0.3 u-space px of the motion (SR: 0.04); flows left at
        # output scale would be off by (scale_factor - 1) px per frame step.
        steps = u["stop"] - u["start"] - 1
        interior = end[:, 2:-2, 2:-2].reshape(2, -1)
        np.testing.assert_allclose(np.median(interior, 1), [-steps * motion[0], -steps * motion[1]], atol=0.5)
    return {u["id"]: manifest.get_arrays(u["id"])["frames"] for u in units}


def test_sr_x4_with_a_latent_upscaler(latent_models, tmp_path):
    """SD ×4 upscaler (VAE factor 4, u at the low-res size, v-prediction). 17×15 input:
    the 68×60 output is padded to 72×64 (multiple 8 = factor 4 × UNet multiple 2), so the
    model samples on an 18×16 grid."""
    model = latent_models["upscale"]
    assert geometry(model) == (4, 2)
    src, lr = source_video(tmp_path / "src", (17, 15), shift=(1.0, 0.0))
    dst = tmp_path / "out"
    # Tiled: --tile 32 is at most an 8² u-grid tile (overlap 1/8: 1 u pixel), so the 18×16 grid
    # takes 3 × 3 tiles (the model's native 16² would take 2 × 1).
    assert run_cli(src, dst, "--task", "sr", "--scale", "4", "--model", str(model), "--tile", "32") == 0
    payloads = check_units(dst, grid=(18, 16), motion=(1.0, 0.0))

    out = probe(str(dst / "v.mp4"))
    assert (out.frames, out.height, out.width) == (FRAMES, 68, 60)
    down = inverse.SuperResolution(4, "bicubic").forward
    y = torch.from_numpy(lr).permute(0, 3, 1, 2).float() / 255
    restored = torch.from_numpy(np.concatenate(list(payloads.values()))).permute(0, 3, 1, 2).float() / 255
    hr = torch.from_numpy(decode_span(str(dst / "v.mp4"), 0, FRAMES)).permute(0, 3, 1, 2).float() / 255
    # The payloads (before H.264) are consistent up to uint8 rounding (measured max 0.0056);
    # the video up to the codec (measured mean 0.0068, max 0.034).
    assert float((down(restored) - y).abs().max()) < 0.01
    err = (down(hr) - y).abs()
    assert float(err.mean()) < 0.02 and float(err.max()) < 0.1


def test_inpainting_with_a_latent_inpainting_model(latent_models, tmp_path):
    """SD inpainting (VAE factor 2, UNet in_channels 9). 26×22 input, padded to 28×24
    (multiple 4 = factor 2 × UNet multiple 2): a 14×12 grid; 2 px per frame of motion is
    1 u-space pixel."""
    model = latent_models["inpaint"]
    assert geometry(model) == (2, 2)
    src, frames = source_video(tmp_path / "src", (26, 22), shift=(0.0, 2.0))
    dst = tmp_path / "out"
    mask = "rect:0.25,0.25,0.75,0.75"
    # Tiled: --tile 16 --tile-overlap 4 is an 8² u-grid tile overlapping by 2: 2 × 2 tiles of the
    # 14×12 grid (its native 16² would hold it whole).
    assert run_cli(src, dst, "--task", "inpaint", "--mask", mask, "--model", str(model), "--tile", "16",
                   "--tile-overlap", "4") == 0
    payloads = check_units(dst, grid=(14, 12), motion=(0.0, 1.0))

    out = probe(str(dst / "v.mp4"))
    assert (out.frames, out.height, out.width) == (FRAMES, 26, 22)
    known = inverse.parse_mask(mask, (26, 22), FRAMES)[:, 0].numpy() > 0.5  # (T, H, W), True = observed
    assert 0 < known.mean() < 1
    restored = np.concatenate(list(payloads.values()))
    np.testing.assert_array_equal(restored[known], frames[known])  # the payloads exactly
    # The video up to the codec. H.264 of the input alone is off by 0.011 on average here;
    # the random model's fill (0.33 from the input in the hole) bleeds into the observed
    # pixels next to it through the codec's blocks and 4:2:0 chroma (measured: mean 0.022,
    # 0.048 in the first pixel ring, 0.017 beyond two pixels).
    video = decode_span(str(dst / "v.mp4"), 0, FRAMES).astype(np.float32) / 255
    err = np.abs(video - frames.astype(np.float32) / 255).mean(-1)
    hole = torch.from_numpy(~known[:1, None]).float()
    beyond = F.max_pool2d(hole, 5, stride=1, padding=2)[0, 0].numpy() == 0  # over two pixels from the hole
    assert err[known].mean() < 0.04 and err[:, beyond].mean() < 0.03
