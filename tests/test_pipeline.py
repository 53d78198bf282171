"""The pipeline end to end on a real local Ray: videos in, restored videos and manifests out.

A tiny random diffusers UNet keeps these fast; the seam test uses the shipped prior,
whose outputs are meaningful enough for warping errors to compare.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray
import s3fs
import torch

from raywarp import metrics, synthetic
from raywarp.cli import main as cli_main
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.decode import decode_span
from raywarp.pipeline.encode import encode_video
from raywarp.pipeline.manifest import ConfigMismatchError, Manifest
from raywarp.pipeline.run import run
from raywarp.pipeline.source import probe
from raywarp.sampler import SamplerConfig
from videos import shown_rotated, write_lossless

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("local_ray")


def frames_u8(photo: str, frames: int, size, **motion) -> np.ndarray:
    video, _ = synthetic.affine_video(photo, frames, size, synthetic.affine_motion(size, **motion))
    return (video * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_video(path: Path, photo: str, frames: int, size, **motion) -> Path:
    encode_video(iter(frames_u8(photo, frames, size, **motion)), str(path), Fraction(25), crf=10, gop=4)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Videos of different lengths and sizes (one shorter than a clip, one odd-sized), two
    bad files, and one cut short: it probes, but its later spans do not decode."""
    root = tmp_path_factory.mktemp("archive")
    write_video(root / "long.mp4", "coffee", 17, (16, 16), shift=(1.0, 0.0))
    whole = write_video(root / "cut.mp4", "chelsea", 17, (16, 16), shift=(0.0, 1.0)).read_bytes()
    (root / "cut.mp4").write_bytes(whole[: int(0.9 * len(whole))])
    write_video(root / "short.mp4", "rocket", 4, (12, 20), shift=(0.0, 1.0))
    (root / "nested").mkdir()
    write_video(root / "nested" / "odd.mp4", "astronaut", 9, (11, 13), angle_deg=2.0)
    (root / "broken.mp4").write_bytes(os.urandom(5000))
    (root / "empty.mov").write_bytes(b"")
    (root / "photo.mp4").write_bytes(cv2.imencode(".png", frames_u8("rocket", 1, (16, 16))[0])[1].tobytes())  # renamed
    (root / "notes.txt").write_text("not a video")  # files that are not taken: each named, with why
    (root / "nested" / "music.m4a").write_bytes(b"")
    return root


def small_config(model: str, steps: int = 3) -> RunConfig:
    return RunConfig(task="sr", scale=4, model=model, clip_len=7, overlap=2, sampler=SamplerConfig(steps=steps), max_actors=1)


@pytest.fixture(scope="module")
def finished_run(archive, tiny_model, tmp_path_factory):
    dst = tmp_path_factory.mktemp("restored")
    summary = run(str(archive), str(dst), small_config(tiny_model))
    return dst, summary


def test_every_good_video_is_restored_and_bad_ones_are_reported(finished_run, archive):
    dst, summary = finished_run
    assert sorted(Path(u).name for u in summary.videos_done) == ["long.mp4", "odd.mp4", "short.mp4"]
    assert sorted(Path(u).name for u in summary.videos_failed) == ["broken.mp4", "cut.mp4", "empty.mov", "photo.mp4"]
    assert "empty" in summary.videos_failed[str(archive / "empty.mov")]
    assert "a still image (png), not a video" in summary.videos_failed[str(archive / "photo.mp4")]
    not_taken = {Path(r["uri"]).name: r["reason"] for r in Manifest(str(dst)).read_table("skipped").to_pylist()}
    assert not_taken == {"notes.txt": "not a video file (.txt)", "music.m4a": "an audio file (.m4a): no video to restore"}
    assert sorted(Path(u).name for u in summary.skipped) == ["music.m4a", "notes.txt"]
    for name, src in [("long", archive / "long.mp4"), ("short", archive / "short.mp4"), ("nested/odd", archive / "nested" / "odd.mp4")]:
        a, b = probe(str(src)), probe(str(dst / f"{name}.mp4"))
        assert b.frames == a.frames
        assert (b.width, b.height) == (4 * a.width, 4 * a.height)
        assert (b.fps_num, b.fps_den) == (a.fps_num, a.fps_den)


def test_manifest_has_a_row_for_every_unit_and_video(finished_run):
    dst, _ = finished_run
    manifest = Manifest(str(dst))
    latest = manifest.latest()
    plan = manifest.read_table("clips").to_pylist()
    assert plan and all(u["id"] in latest for u in plan)
    assert {u["kind"] for u in plan} == {"seam", "clip"}
    good = [u for u in plan if not u["uri"].endswith("cut.mp4")]
    assert all(latest[u["id"]]["status"] == "done" for u in good)
    # The cut video: its first units are restored; from the first span that does not
    # decode on, every unit fails: by its own decode, or naming the failed unit it needs
    # (noise coordinates run through every earlier unit; a clip needs its seams).
    cut = sorted((u for u in plan if u["uri"].endswith("cut.mp4")), key=lambda u: (u["start"], u["phase"]))
    states = [latest[u["id"]]["status"] for u in cut]
    first = states.index("failed")
    assert 0 < first and set(states[first:]) == {"failed"} and set(states[:first]) == {"done"}
    errors = {u["id"]: latest[u["id"]]["error"] for u in cut[first:]}
    assert any(e.startswith("decode:") for e in errors.values())
    for e in errors.values():
        assert e.startswith("decode:") or any(f"needs unit {other}" in e for other in errors), e
    videos = [r for r in latest.values() if r["kind"] == "video"]
    assert sorted(r["status"] for r in videos) == ["done"] * 3 + ["failed"] * 4
    status = manifest.status()
    failed = len(cut) - first
    assert (status["clips_done"], status["clips_failed"], status["clips_pending"], status["videos_failed"]) == (
        len(plan) - failed, failed, 0, 4)


def test_videos_stream_out_while_others_are_processed(finished_run):
    """No barrier between videos: the first video is written before the last unit is done."""
    rows = Manifest(str(finished_run[0])).progress().to_pylist()
    first_video = min(r["finished_at"] for r in rows if r["kind"] == "video" and r["status"] == "done")
    assert first_video < max(r["finished_at"] for r in rows if r["kind"] != "video")


def test_outputs_agree_with_the_measurements(finished_run, archive):
    dst, _ = finished_run
    lr = decode_span(str(archive / "long.mp4"), 0, 17).astype(np.float32) / 255
    hr = decode_span(str(dst / "long.mp4"), 0, 17).astype(np.float32) / 255
    down = torch.nn.functional.avg_pool2d(torch.from_numpy(hr).permute(0, 3, 1, 2), 4)
    # bicubic A is not an average, so compare loosely; the point is "same picture, 4x the pixels"
    assert float((down - torch.from_numpy(lr).permute(0, 3, 1, 2)).abs().mean()) < 0.05


def test_second_run_recomputes_nothing_and_rewrites_identical_bytes(finished_run, archive, tiny_model):
    dst, _ = finished_run
    before = (dst / "long.mp4").read_bytes()
    summary = run(str(archive), str(dst), small_config(tiny_model))
    assert summary.units_computed == 0 and summary.units_skipped > 0
    assert (dst / "long.mp4").read_bytes() == before


def test_different_config_on_same_destination_is_refused(finished_run, archive, tiny_model):
    dst, _ = finished_run
    with pytest.raises(ConfigMismatchError, match="steps"):
        run(str(archive), str(dst), RunConfig(task="sr", model=tiny_model, clip_len=7, overlap=2, sampler=SamplerConfig(steps=4)))


def test_a_run_that_raises_frees_its_actors(archive, tiny_model, tmp_path, monkeypatch):
    """An exception after the worker pool started must not leave its actors holding the
    cluster's CPUs (the traceback keeps their handles alive): the next run would wait forever."""
    from raywarp.pipeline import run as run_module

    def broken_plan(*args, **kwargs):
        raise RuntimeError("planning broke")

    monkeypatch.setattr(run_module.rplan, "plan_video", broken_plan)
    with pytest.raises(RuntimeError, match="planning broke") as raised:  # holds the traceback, as pytest does for a failure
        run(str(archive), str(tmp_path / "out"), small_config(tiny_model))
    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2, raised.traceback


def test_actors_that_cannot_start_stop_the_run_with_their_error(archive, tiny_model, tmp_path):
    """A model that loads nowhere (its weights damaged after the driver checked it): the
    actors die starting, and after three the run stops, saying why, instead of waiting."""
    from raywarp.pipeline.run import WorkerStartError

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    for weights in model.rglob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    with pytest.raises(WorkerStartError, match=r"no worker actor could start \(3 tries\)"):
        run(str(archive), str(tmp_path / "out"), small_config(str(model)), quiet=True)


def test_cli_status_and_exit_code(finished_run, archive, tiny_model, capsys):
    dst, _ = finished_run
    assert cli_main(["status", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "videos: 3 done, 4 failed, 0 pending" in out and "cut.mp4" in out  # the latest errors
    code = cli_main(["run", str(archive), "--out", str(dst), "--task", "sr", "--model", tiny_model, "--mode", "warped",
                     "--clip-len", "7", "--overlap", "2", "--steps", "3", "--max-actors", "1"])
    assert code == 1  # four bad inputs
    assert cli_main(["run", str(archive), "--out", str(dst), "--model", "some-org/some-model"]) == 2


def test_s3_in_and_out(s3_bucket, tmp_path, tiny_model):
    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(write_video(tmp_path / "clip.mp4", "chelsea", 9, (16, 16), shift=(1.0, 1.0))), f"{bucket}/in/clip.mp4")
    fs.pipe(f"{bucket}/in/bad.mp4", b"not a video")
    summary = run(f"s3://{bucket}/in", f"s3://{bucket}/out", small_config(tiny_model), storage_options=options)
    assert [Path(u).name for u in summary.videos_done] == ["clip.mp4"]
    assert list(summary.videos_failed) == [f"s3://{bucket}/in/bad.mp4"]
    out = probe(f"s3://{bucket}/out/clip.mp4", options)
    assert (out.frames, out.width) == (9, 64)
    assert Manifest(f"s3://{bucket}/out", options).status()["videos_done"] == 1


@pytest.mark.slow
def test_the_command_line_shows_progress_and_nothing_of_rays_own_output(tiny_model, tmp_path):
    """A user's terminal gets the plan, one progress display and the outcome; Ray's logs
    (and its auth-token notice) stay in the session folder the summary names."""
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "a.mp4", "coffee", 9, (16, 16), shift=(1.0, 0.0))
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # Ray's default: token auth, announced
    done = subprocess.run([sys.executable, "-m", "raywarp.cli", "run", str(src), "--out", str(tmp_path / "out"),
                           "--task", "sr", "--model", tiny_model, "--mode", "warped", "--clip-len", "7", "--overlap", "2",
                           "--steps", "2", "--max-actors", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    err = done.stderr.splitlines()
    assert err[0] == f"1 videos, 1 shots, 3 units planned (0 unusable); manifest in {tmp_path / 'out'}/_raywarp"
    assert err[1].startswith("progress: videos 0/1, units 0/3, frames 0/9;")
    assert err[-1].startswith("progress: videos 1/1, units 3/3, frames 9/9;")
    assert len(err) == 4, done.stderr  # the video's line between: nothing else
    logs = done.stdout.splitlines()[-1].removeprefix("Ray's logs: ")
    assert Path(logs).is_dir() and any(Path(logs).glob("raylet*")), done.stdout


def test_verbose_lets_rays_output_through(monkeypatch):
    from raywarp.pipeline import run as run_module

    seen = []
    monkeypatch.setattr(run_module.ray, "init", lambda **kwargs: seen.append(kwargs))
    run_module._init_ray(small_config("default"), None, verbose=True, credentials={})
    run_module._init_ray(small_config("default"), None, verbose=False, credentials={})
    assert [(k["log_to_driver"], k["logging_level"]) for k in seen] == [(True, 20), (False, 30)]


# (photo, frames, motion) of a film's shots: longer than a clip, shorter than one, one
# frame (shorter than the overlap), and long again.
FILM = [("astronaut", 11, {"shift": (1.0, 0.0)}), ("coffee", 3, {"zoom": 1.05}), ("chelsea", 1, {}),
        ("rocket", 9, {"angle_deg": 3.0})]


@pytest.fixture(scope="module")
def film_run(tiny_model, tmp_path_factory):
    """A film cut from shots of different photographs and motions, each shot also as a
    video of its own (lossless, so both decode to the same pixels), a phone video shown
    rotated, and a video at a variable frame rate, in one run."""
    src = tmp_path_factory.mktemp("films")
    parts = [frames_u8(photo, n, (8, 8), **motion) for photo, n, motion in FILM]
    write_lossless(src / "film.mkv", np.concatenate(parts))
    (src / "alone").mkdir()
    for k, part in enumerate(parts):
        write_lossless(src / "alone" / f"shot{k}.mkv", part)
    landscape = write_video(tmp_path_factory.mktemp("phone") / "landscape.mp4", "rocket", 5, (12, 20), shift=(0.0, 1.0))
    shown_rotated(landscape, src / "portrait.mp4")
    write_lossless(src / "vfr.mkv", parts[0][:4], times_ms=[0, 40, 120, 160])  # a frame's slot left empty
    dst = tmp_path_factory.mktemp("films_out")
    summary = run(str(src), str(dst), small_config(tiny_model))
    bounds = np.cumsum([0] + [n for _, n, _ in FILM])
    return src, dst, summary, [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _restored(manifest: Manifest, uri: str) -> np.ndarray:
    """A video's restored frames from its units' payloads, before H.264."""
    units = sorted((u for u in manifest.read_table("clips").to_pylist() if u["uri"] == uri), key=lambda u: u["out_start"])
    return np.concatenate([manifest.get_arrays(u["id"])["frames"] for u in units])


def test_a_film_is_cut_into_its_shots_and_nothing_leaks_across_a_cut(film_run):
    """Each shot restored in the film is exactly that shot restored as a video of its own."""
    src, dst, summary, shots = film_run
    assert list(summary.videos_failed) == [str(src / "vfr.mkv")], summary.format()
    assert "variable frame rate" in summary.videos_failed[str(src / "vfr.mkv")]
    manifest = Manifest(str(dst))
    film = str(src / "film.mkv")
    table = [r for r in manifest.read_table("shots").to_pylist() if r["uri"] == film]
    assert [(r["start"], r["stop"]) for r in sorted(table, key=lambda r: r["shot"])] == shots
    assert all(u["shot_start"] <= u["start"] < u["stop"] <= u["shot_stop"]
               for u in manifest.read_table("clips").to_pylist())
    restored = _restored(manifest, film)
    assert probe(str(dst / "film.mp4")).frames == len(restored) == shots[-1][1]
    for k, (a, b) in enumerate(shots):
        np.testing.assert_array_equal(restored[a:b], _restored(manifest, str(src / "alone" / f"shot{k}.mkv")))


def test_a_rotated_video_is_restored_as_it_is_displayed(film_run):
    src, dst, _, _ = film_run
    source, out = probe(str(src / "portrait.mp4")), probe(str(dst / "portrait.mp4"))
    assert (source.rotation, source.width, source.height) == (270, 12, 20)
    assert (out.rotation, out.width, out.height) == (0, 48, 80)
    upright = decode_span(str(src / "portrait.mp4"), 0, 5, rotation=270).astype(np.float32) / 255
    hr = torch.from_numpy(decode_span(str(dst / "portrait.mp4"), 0, 5).astype(np.float32) / 255).permute(0, 3, 1, 2)
    down = torch.nn.functional.avg_pool2d(hr, 4).permute(0, 2, 3, 1).numpy()
    assert np.abs(down - upright).mean() < 0.05


@pytest.mark.slow
def test_seams_are_as_consistent_as_interiors(tmp_path):
    """Warping error across clip boundaries at most 1.1x the interior median (shipped prior).

    The scene moves by whole pixels, so every frame is rendered alike: with half-pixel
    motion, odd and even frames differ in sharpness and pair errors alternate, which
    says nothing about seams. Frames are taken from the payloads, before H.264.
    """
    size, frames = (48, 48), 40
    motion = synthetic.affine_motion(size, shift=(1.0, 1.0))
    video, fwd = synthetic.affine_video("coffee", frames, size, motion)
    bwd = synthetic.affine_backward_flow(motion, size).expand(frames - 1, -1, -1, -1)
    src = tmp_path / "src"
    src.mkdir()
    encode_video(iter((video * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()), str(src / "v.mp4"), Fraction(25), crf=4)
    config = RunConfig(task="inpaint", mask="rect:0.3,0.3,0.7,0.7", clip_len=8, overlap=2,
                       sampler=SamplerConfig(steps=10), max_actors=1)
    dst = tmp_path / "out"
    assert run(str(src), str(dst), config).ok
    manifest = Manifest(str(dst))
    units = sorted(manifest.read_table("clips").to_pylist(), key=lambda u: u["out_start"])
    out = np.concatenate([manifest.get_arrays(u["id"])["frames"] for u in units])
    per_pair = np.asarray(metrics.warping_error_per_pair(torch.from_numpy(out).permute(0, 3, 1, 2) / 255, fwd, bwd))
    owner = np.concatenate([[k] * u["frames"] for k, u in enumerate(units)])
    boundary = owner[:-1] != owner[1:]
    assert boundary.sum() >= 10
    assert np.median(per_pair[boundary]) <= 1.1 * np.median(per_pair[~boundary]), (per_pair, boundary)
