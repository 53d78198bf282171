"""Every benchmark at its smallest size, so a benchmark that breaks fails the suite.

(`bench.densify`, `bench.gpu` and `bench.gpu_check` have theirs beside their own tests:
test_densify.py, test_bench_gpu.py, test_gpu_check.py.)
"""

import math

import pytest

from raywarp.bench import flow, long, manifest, pipeline, sampler, tiles


def test_sampler_benchmark_scores_every_scene_task_and_mode():
    rows = sampler.main(["--frames", "3", "--size", "32", "--steps", "1", "--modes", "independent", "warped"])
    assert {(r["task"], r["mode"]) for r in rows} >= {(t, m) for t in ("SR ×4", "inpaint") for m in ("independent", "warped")}
    assert len({r["scene"] for r in rows}) >= 4
    assert all(r["warp"] >= 0 and math.isfinite(r["psnr"]) and r["s/frame"] >= 0 for r in rows)
    assert all(r["s/frame"] > 0 for r in rows if r["mode"] != "baseline" and not r["mode"].startswith("baseline "))


def test_tiles_benchmark_times_and_scores_untiled_and_tiled():
    rows = tiles.main(["--sizes", "64", "--tiles", "0", "32", "--frames", "2", "--steps", "1", "--inpaint-sizes", "192"])
    untiled, tiled, crop, frame = rows
    assert crop["area"].startswith("crop ") and frame["area"] == "whole frame"
    assert all(math.isfinite(r["psnr"]) and r["warp"] > 0 for r in (crop, frame))
    assert (untiled["tile"], tiled["tile"], tiled["overlap"]) == (0, 32, 4)
    assert all(r["s/frame"] > 0 and r["peak MiB"] >= 0 and r["warp"] > 0 and math.isfinite(r["psnr"]) for r in rows)
    assert tiled["cost"] > 0 and 0.5 < tiled["seam"] < 2


def test_manifest_benchmark_compaction_writes_n_log_n_bytes():
    """10,000 one-row commits compacted every 256 as the driver does: tiered compaction
    rewrites each row once per level (measured 3.4× the final log). A checkpoint holding
    every row, rewritten at every compaction, wrote 23.7× at this size, growing as N²."""
    (row,) = manifest.main(["--rows", "10000", "--rows-per-commit", "1"])
    assert row["commits"] == 10_000 and row["files"] <= 8
    assert row["written × final"] < 5, row
    assert row["status s"] > 0 and row["resume read s"] > 0


def test_flow_benchmark_scores_every_set_and_estimator():
    rows = flow.main(["--size", "32", "--pairs", "1"])
    assert {r["set"] for r in rows} >= {"real (Motorcycle)"} and len({r["set"] for r in rows}) >= 3
    assert {r["estimator"] for r in rows} >= {"DIS medium", "Farneback", flow.DENSIFIED}
    assert all(r["epe"] >= 0 and r["ms"] > 0 for r in rows)


def test_pipeline_benchmark_matches_the_plain_loop(local_ray):
    rows = pipeline.main(["--videos", "1", "--frames", "6", "--size", "8", "8", "--steps", "1", "--actors", "1"])
    plain, ray_run = rows
    assert plain["runner"].startswith("plain loop") and ray_run["runner"] == "raywarp run, 1 actor"
    assert ray_run["diff"] == 0  # the same stages, so the same videos, pixel for pixel
    assert all(r["fps"] > 0 and 0 < r["busy"] <= 1 and r["bytes_px"] > 0 for r in rows)


@pytest.mark.slow
def test_long_video_benchmark_measures_the_driver_and_the_encoder():
    (row,) = long.main(["--frames", "12", "--size", "8", "8", "--steps", "1", "--scan-size", "48", "64"])
    assert row["found"] == row["shots"] and row["units"] >= 1
    assert row["driver"]["rss_peak"] >= row["driver"]["rss_before"] > 0
    assert row["encoder"]["rss_peak"] >= row["encoder"]["rss_before"] > 0
