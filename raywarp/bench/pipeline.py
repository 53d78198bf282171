"""Pipeline benchmark: `raywarp run` on the embedded Ray against a plain single-process loop.

    python -m raywarp.bench.pipeline [--videos 2] [--frames 24] [--size 24 32] [--steps 20] [--actors 1 2]

The workload: videos of held-out photographs with known motion, restored by SR ×4 with
the shipped prior (`warped` sampling). The plain loop calls the same per-unit functions
(`raywarp.pipeline.clip`) in plan order, one process, all cores to torch, and writes
the same payloads and videos; the pipeline runs them as Ray Data stages with 1…N
sampler actors. Reported: frames per second end to end (Ray start included) and over
the processing span (first unit started to last video written), per-stage seconds from
the manifest, and how busy the sampler actors were (sample seconds / (span × actors)):
a busy fraction near 1 means decode and flow keep the sampler fed.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from raywarp import inverse, synthetic
from raywarp.models import load_denoiser
from raywarp.pipeline import clip as rclip
from raywarp.pipeline import plan as rplan
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.decode import decode_span
from raywarp.pipeline.encode import encode_video
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.run import output_uri, run
from raywarp.pipeline.source import list_videos, probe
from raywarp.sampler import SamplerConfig

PHOTOS = ("coffee", "rocket", "chelsea", "astronaut")


def make_workload(folder: Path, videos: int, frames: int, size) -> None:
    """`videos` low-resolution inputs (size = output size / 4) with known motion."""
    op = inverse.SuperResolution(4, "bicubic")
    hr = (4 * size[0], 4 * size[1])
    for i in range(videos):
        motion = synthetic.affine_motion(hr, shift=(1.0 + i, 0.5), angle_deg=0.5 * i)
        video, _ = synthetic.affine_video(PHOTOS[i % len(PHOTOS)], frames, hr, motion)
        lr = (op.degrade(video).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        encode_video(iter(lr), str(folder / f"video{i}.mp4"), Fraction(24), crf=8)


def plain_loop(src: str, dst: str, config: RunConfig) -> dict:
    """The same work in one process, in the pipeline's order (flows, coordinate scan,
    seams, clips, encode); returns per-stage seconds and frames."""
    manifest = Manifest(dst)
    manifest.start_run(config.to_dict(), config.hash())
    denoiser = load_denoiser(config.model)
    seconds = dict.fromkeys(("decode", "flow", "sample", "write", "encode"), 0.0)
    total, taken = 0, set()

    def timed(stage, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        seconds[stage] += time.perf_counter() - t0
        return out

    for uri in list_videos(src):
        video = probe(uri)
        video["video_id"] = rplan.video_id(uri, video["fingerprint"], config.hash())
        units = sorted(rplan.plan_video(video, config), key=lambda u: (u["start"], u["phase"]))
        inputs = {}
        for u in units:
            pixels = timed("decode", decode_span, uri, u["start"], u["stop"])
            m = rclip.measure(pixels, config, u["start"], u["video_frames"])
            fwd, bwd = timed("flow", rclip.flows, m, config)
            inputs[u["id"]] = (m, fwd, bwd, rclip.end_map(m, fwd, bwd, (denoiser.scale_factor, denoiser.multiple)))
        first = dict(zip([u["id"] for u in units], rclip.start_coords([inputs[u["id"]][3] for u in units])))
        for u in sorted(units, key=lambda u: u["phase"]):
            m, fwd, bwd, _ = inputs[u["id"]]
            anchors = [manifest.get_arrays(a) if a else None for a in (u["start_anchor"], u["end_anchor"])]
            out = timed("sample", rclip.restore, denoiser, m, fwd, bwd, config, rclip.video_seed(config, video["video_id"]),
                        u["start"], first[u["id"]], *anchors)
            own = slice(u["out_start"] - u["start"], u["out_stop"] - u["start"])
            timed("write", lambda: manifest.put_arrays(u["id"], frames=out.frames[own], start_trajectory=out.start_trajectory,
                                                       end_trajectory=out.end_trajectory))
        frames = (f for u in sorted(units, key=lambda u: u["out_start"]) for f in manifest.get_arrays(u["id"])["frames"])
        total += timed("encode", encode_video, frames, output_uri(dst, uri, taken), Fraction(video["fps_num"], video["fps_den"]))
    return {"frames": total, "seconds": seconds}


def stage_seconds(dst: str) -> tuple[dict, float, float]:
    """Per-stage seconds summed over committed units, the processing span, and sample seconds."""
    rows = Manifest(dst).progress().to_pylist()
    units = [r for r in rows if r["kind"] != "video" and r["status"] == "done"]
    sums = {k: sum(r[f"seconds_{k}"] or 0.0 for r in units) for k in ("decode", "flow", "sample", "write")}
    sums["encode"] = sum(r["seconds_write"] or 0.0 for r in rows if r["kind"] == "video")
    span = max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
    return sums, span, sums["sample"]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, nargs=2, default=(16, 24), metavar=("H", "W"), help="input (low-resolution) size")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--actors", type=int, nargs="+", default=(1, 2), help="sampler pool sizes to measure")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="raywarp-bench-"))
    (work / "src").mkdir()
    make_workload(work / "src", args.videos, args.frames, args.size)
    base = RunConfig(task="sr", scale=4, clip_len=12, overlap=2, sampler=SamplerConfig(steps=args.steps))
    print(f"pipeline benchmark: {args.videos} videos x {args.frames} frames, SR x4 to {4 * args.size[0]}x{4 * args.size[1]}, "
          f"{args.steps} steps, warped; {platform.processor() or 'CPU'}, {torch.get_num_threads()} threads")
    rows = []
    start = time.perf_counter()
    plain = plain_loop(str(work / "src"), str(work / "plain"), base)
    wall = time.perf_counter() - start
    rows.append({"runner": "plain loop (1 process)", "fps": plain["frames"] / wall, "fps_span": plain["frames"] / wall,
                 "busy": 1.0, **plain["seconds"]})
    for actors in args.actors:
        config = dataclasses.replace(base, min_actors=actors, max_actors=actors)
        dst = work / f"ray{actors}"
        start = time.perf_counter()
        summary = run(str(work / "src"), str(dst), config, log=lambda *_: None)
        wall = time.perf_counter() - start
        assert summary.ok, summary.format()
        sums, span, sample = stage_seconds(str(dst))
        rows.append({"runner": f"raywarp run, {actors} sampler actor(s)", "fps": plain["frames"] / wall,
                     "fps_span": plain["frames"] / span, "busy": sample / (span * actors), **sums})
        diff = max(int(np.abs(decode_span(str(f), 0, args.frames).astype(int)
                              - decode_span(str(work / "plain" / f.name), 0, args.frames).astype(int)).max())
                   for f in dst.glob("*.mp4"))
        print(f"  {actors} actor(s): largest pixel difference to the plain loop's videos: {diff} of 255 "
              "(torch threads differ: 1 per actor, all cores in the plain loop)")
    print("\n| runner | frames/s end to end | frames/s processing | sampler busy | decode s | flow s | sample s | write s | encode s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runner']} | {r['fps']:.2f} | {r['fps_span']:.2f} | {r['busy']:.0%} | {r['decode']:.1f} | {r['flow']:.1f} "
              f"| {r['sample']:.1f} | {r['write']:.1f} | {r['encode']:.1f} |")
    best = max(r["fps_span"] for r in rows[1:])
    print(f"\nbest pipeline throughput (processing span) = {best / rows[0]['fps']:.0%} of the plain loop's")
    shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
