"""Pipeline benchmark: `raywarp run` on the embedded Ray against a plain single-process loop.

    python -m raywarp.bench.pipeline [--videos 4] [--frames 24] [--size 16 24] [--steps 20] [--actors 1 2]

The workload: videos of held-out photographs with known motion, restored by SR ×4 with
the shipped prior (`warped` sampling). The plain loop calls the pipeline's own stages
(`raywarp.pipeline.stages`: decode, the worker's flows and sample, encode) in order in
one process, with all cores to torch; `raywarp run` streams them over 1…N worker actors
that share the cores. Reported per runner: frames per second end to end (Ray start
included) and over the processing span (first unit started to last video written),
how busy the workers were sampling (sample seconds / (span × actors)), when the first
video was finished (fraction of the span), payload bytes per output pixel (raw uint8
frames are 3), and per-stage seconds summed over units from the manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from raywarp import inverse, synthetic
from raywarp.pipeline import clip as rclip
from raywarp.pipeline import plan as rplan
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.decode import decode_span
from raywarp.pipeline.encode import encode_video
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline import shots as rshots
from raywarp.pipeline.run import output_uris, run
from raywarp.pipeline.source import list_videos, probe
from raywarp.pipeline.records import ProgressRow, Unit
from raywarp.pipeline.stages import UnitWorker, decode_unit, encode_units
from raywarp.sampler import SamplerConfig
from raywarp.tensors import tensor_to_frames

PHOTOS = ("coffee", "rocket", "chelsea", "astronaut")


def make_workload(folder: Path, videos: int, frames: int, size) -> None:
    """`videos` low-resolution inputs (size = output size / 4) with known motion."""
    op = inverse.SuperResolution(4, "bicubic")
    hr = (4 * size[0], 4 * size[1])
    for i in range(videos):
        motion = synthetic.affine_motion(hr, shift=(1.0 + i, 0.5), angle_deg=0.5 * i)
        video, _ = synthetic.affine_video(PHOTOS[i % len(PHOTOS)], frames, hr, motion)
        encode_video(iter(tensor_to_frames(op.degrade(video))), str(folder / f"video{i}.mp4"), Fraction(24), crf=8)


def restore_units(worker: UnitWorker, units: list[Unit], decode) -> list[ProgressRow]:
    """One video's units through `worker` in this process, in the pipeline's order: every
    unit's flows (the noise coordinates carried along each shot), then the seams, then the
    clips anchored to them. decode(unit) -> (frames, `Decoded`).
    Returns the commit rows, seams first; a unit whose flows fail raises RuntimeError."""
    units = sorted(units, key=lambda u: (u.start, u.phase))
    inputs, coords = {}, None
    for k, u in enumerate(units):
        if k and u.shot != units[k - 1].shot:
            coords = None  # a shot starts its own chain
        pixels, decoded = decode(u)
        flowed, flows, end = worker.flows(u, pixels)
        if flowed.error:
            raise RuntimeError(flowed.error)
        inputs[u.id] = (pixels, flows, coords, decoded, flowed)
        coords = rclip.advance(coords, end)
    rows, seams = [], {}
    for u in sorted(units, key=lambda u: u.phase):
        pixels, flows, first, decoded, flowed = inputs[u.id]
        row, seams[u.id] = worker.sample(u, pixels, flows, first, seams.get(u.start_anchor), seams.get(u.end_anchor),
                                         decoded, flowed, f"{u.id}-plain")
        rows.append(row)
    return rows


def plain_loop(src: str, dst: str, config: RunConfig) -> None:
    """The pipeline's stages called in order in this process: per video, the shot scan,
    `restore_units` on its decoded units, encode."""
    manifest = Manifest(dst)
    attempt = manifest.start_run(config.to_dict(), config.hash())
    worker = UnitWorker(config.to_dict(), dst, None, attempt)
    uris = list_videos(src).videos
    for uri, output in output_uris(dst, uris).items():
        video = probe(uri)
        video = dataclasses.replace(video, video_id=rplan.video_id(uri, video.fingerprint, config.hash()), output=output)
        spans = [rshots.scan_span(uri, a, b, config.shot_threshold) for a, b in rshots.scan_spans(video.frames)]
        units = rplan.plan_video(video, rshots.shots(video.frames, spans), config)
        rows = {r.id: r for r in restore_units(worker, units, lambda u: decode_unit(u, None))}
        failed = [r.error for r in rows.values() if r.status != "done"]
        if failed:
            raise RuntimeError(f"{uri}: {failed[0]}")
        payloads = [(u.id, rows[u.id].checksum(u.id)) for u in sorted(units, key=lambda u: u.out_start)]
        row = encode_units(video, payloads, dst, None, attempt)
        if row.status != "done":
            raise RuntimeError(f"{uri}: {row.error}")
    manifest.compact()


def measure(dst: str, wall: float, actors: int, pixels_per_frame: int) -> dict:
    """The figures of one runner, from its manifest."""
    manifest = Manifest(dst)
    rows = manifest.progress().to_pylist()
    units = [r for r in rows if r["kind"] != "video" and r["status"] == "done"]
    videos = [r for r in rows if r["kind"] == "video" and r["status"] == "done"]
    sums = {k: sum(r[f"seconds_{k}"] or 0.0 for r in units) for k in ("decode", "flow", "sample", "write")}
    sums["encode"] = sum(r["seconds_write"] or 0.0 for r in videos)
    start = min(r["started_at"] for r in rows)
    span = max(r["finished_at"] for r in rows) - start
    frames = sum(r["frames"] for r in videos)
    return {"fps": frames / wall, "fps_span": frames / span, "busy": sums["sample"] / (span * actors),
            "first": (min(r["finished_at"] for r in videos) - start) / span,
            "bytes_px": manifest.payload_bytes() / (frames * pixels_per_frame), **sums}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, nargs=2, default=(16, 24), metavar=("H", "W"), help="input (low-resolution) size")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--actors", type=int, nargs="+", default=(1, 2), help="worker pool sizes to measure")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="raywarp-bench-"))
    (work / "src").mkdir()
    make_workload(work / "src", args.videos, args.frames, args.size)
    base = RunConfig(task="sr", scale=4, clip_len=12, overlap=2, sampler=SamplerConfig(steps=args.steps))
    pixels = 16 * args.size[0] * args.size[1]
    print(f"pipeline benchmark: {args.videos} videos x {args.frames} frames, SR x4 to {4 * args.size[0]}x{4 * args.size[1]}, "
          f"{args.steps} steps, warped; {platform.processor() or 'CPU'}, {cores} cores")
    rows = []
    start = time.perf_counter()
    plain_loop(str(work / "src"), str(work / "plain"), dataclasses.replace(base, actor_cpus=cores))
    rows.append({"runner": "plain loop (1 process)", **measure(str(work / "plain"), time.perf_counter() - start, 1, pixels)})
    for actors in args.actors:
        # The actors share the cores, leaving a quarter of one to the light decode/encode tasks.
        config = dataclasses.replace(base, min_actors=actors, max_actors=actors, actor_cpus=(cores - 0.25) / actors)
        dst = work / f"ray{actors}"
        start = time.perf_counter()
        summary = run(str(work / "src"), str(dst), config, quiet=True)
        assert summary.ok, summary.format()
        diff = max(int(np.abs(decode_span(str(f), 0, args.frames).astype(int)
                              - decode_span(str(work / "plain" / f.name), 0, args.frames).astype(int)).max())
                   for f in dst.glob("*.mp4"))
        rows.append({"runner": f"raywarp run, {actors} actor{'s' * (actors > 1)}",
                     **measure(str(dst), time.perf_counter() - start, actors, pixels), "diff": diff})
        print(f"  {actors} actor(s): largest pixel difference to the plain loop's videos: {diff} of 255")
    print("\n| runner | frames/s end to end | frames/s processing | sampler busy | first video done at | payload B/px "
          "| decode s | flow s | sample s | write s | encode s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runner']} | {r['fps']:.2f} | {r['fps_span']:.2f} | {r['busy']:.0%} | {r['first']:.0%} | {r['bytes_px']:.2f} "
              f"| {r['decode']:.1f} | {r['flow']:.1f} | {r['sample']:.1f} | {r['write']:.1f} | {r['encode']:.1f} |")
    plain = rows[0]
    for r in rows[1:]:
        print(f"{r['runner']}: processing {r['fps_span'] / plain['fps_span']:.2f}x, end to end {r['fps'] / plain['fps']:.2f}x "
              f"the plain loop's")
    shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
