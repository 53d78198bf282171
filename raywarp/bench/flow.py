"""Flow benchmark: how well each way of estimating motion on a degraded clip finds the
true motion, and what it costs.

    python -m raywarp.bench.flow [--size 64] [--pairs 8] [--detail-sweep [--h264]]

Sets (none seen by any trained part): the sampler benchmark's held-out scenes (a
translation, a rotation, a zoom, a moving layer; `raywarp.bench.sampler.scenes`), pairs
of held-out photographs on slanted planes seen by a moving camera (homographies with
parallax), and the real Middlebury 2014 Motorcycle pair (ground truth from disparity,
scored where it is valid). Each is degraded as the pipeline's inputs are: SR ×4
(bicubic) and inpainting (a static hole). Options: the guide the flow is estimated on
(the classical restoration at output size, as the pipeline does; for SR the
low-resolution input, the flow then upsampled; the clean frames, the bound any guide
could reach) and the estimator (OpenCV DIS at its three presets, Farneback). The flow
is raw, forward, scored by mean EPE in output pixels; for the baseline guide one more
row scores the flow the pipeline samples along (DIS medium both ways, untrusted matches
densified: `raywarp.flow.restoration_flows`).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from fractions import Fraction

import numpy as np
import torch

from raywarp import flow as rflow
from raywarp import inverse, synthetic
from raywarp.bench.sampler import scenes
from raywarp.pipeline.decode import decode_span
from raywarp.pipeline.encode import encode_video
from raywarp.tensors import frames_to_tensor, tensor_to_frames

ESTIMATORS = {"DIS medium": ("dis", "medium"), "DIS fast": ("dis", "fast"), "DIS ultrafast": ("dis", "ultrafast"),
              "Farneback": ("farneback", "medium")}
HOLE = "rect:0.35,0.3,0.65,0.6"
DENSIFIED = "DIS medium, densified"  # as the pipeline samples along it (`rflow.restoration_flows`)


def pairs(size: int, count: int) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """{set: [(frames (T, 3, H, W), true forward flows (T−1, 2, H, W))]}."""
    generated = synthetic.make_batch(11, count, (size, size), synthetic.HELDOUT_PHOTOS, motions=("perspective",))
    stereo = synthetic.stereo_pair(scale=4)
    h, w = (s - s % 4 for s in stereo["frame0"].shape[-2:])  # SR ×4 needs multiples of 4
    real_flow = stereo["flow"][..., :h, :w].clone()
    real_flow[~stereo["valid"][..., :h, :w].expand_as(real_flow).bool()] = float("nan")  # scored where valid
    return {
        "held-out scenes": [(video, fwd) for video, fwd, _ in scenes(6, (size, size)).values()],
        "held-out perspective": [(torch.cat([generated["frame0"][i : i + 1], generated["frame1"][i : i + 1]]),
                                  generated["flow"][i : i + 1]) for i in range(count)],
        "real (Motorcycle)": [(torch.cat([stereo["frame0"], stereo["frame1"]])[..., :h, :w], real_flow)],
    }


def epe(flow: torch.Tensor, true: torch.Tensor) -> float:
    valid = ~torch.isnan(true).any(1)
    return float((flow - torch.nan_to_num(true)).norm(dim=1)[valid].mean())


def benchmark(size: int, count: int) -> list[dict]:
    rows = []
    for name, clips in pairs(size, count).items():
        for task in ("SR ×4", "inpaint"):
            for guide in ("baseline", "input", "clean frames") if task == "SR ×4" else ("baseline", "clean frames"):
                estimators = {**ESTIMATORS, **({DENSIFIED: ("dis", "medium")} if guide == "baseline" else {})}
                for label, (method, preset) in estimators.items():
                    errors, seconds, frames = [], 0.0, 0
                    for video, true in clips:
                        t, (hh, ww) = video.shape[0], video.shape[-2:]
                        op = (inverse.SuperResolution(4, "bicubic") if task == "SR ×4"
                              else inverse.Inpainting(inverse.parse_mask(HOLE, (hh, ww), t)))
                        y = op.degrade(video)
                        images = {"baseline": op.baseline(y), "input": y, "clean frames": video}[guide]
                        if min(images.shape[-2:]) < 12 and method == "dis":  # DIS refuses tiny frames
                            break
                        start = time.perf_counter()
                        detail = op.scale if guide == "baseline" and task == "SR ×4" else 1  # see rflow.estimate
                        if label == DENSIFIED:  # the pipeline's flows: untrusted matches densified
                            flow = rflow.restoration_flows(images, op.known(y), detail=detail)[0]
                        else:
                            flow = rflow.estimate(images[:-1], images[1:], method=method, preset=preset, detail=detail)
                        seconds += time.perf_counter() - start
                        frames += t - 1
                        errors.append(epe(rflow.resize_flow(flow, (hh, ww)), true))
                    if errors:
                        rows.append({"set": name, "task": task, "guide": guide, "estimator": label,
                                     "epe": float(np.mean(errors)), "ms": 1000 * seconds / frames})
            print(format_table([r for r in rows if r["set"] == name and r["task"] == task],
                               header=not any(r["set"] != name or r["task"] != task for r in rows)), flush=True)
    return rows


def h264(frames: torch.Tensor, folder: str) -> torch.Tensor:
    """`frames` (T, 3, H, W) through H.264 at CRF 8 and back, as `raywarp demo` writes its inputs."""
    path = os.path.join(folder, "clip.mp4")
    encode_video(iter(tensor_to_frames(frames)), path, Fraction(24), crf=8)
    return frames_to_tensor(decode_span(path, 0, frames.shape[0]))


def detail_sweep(size: int, count: int, codec: bool = False, factors=(2, 4, 8), levels=(0, 1, 2)) -> list[dict]:
    """How DIS (medium) should treat each guide: EPE of the raw forward flow on SR ×s bicubic
    baselines and the inpainting baseline for each finest pyramid level, unblurred and
    blurred by σ = s/4 and s/2 (`rflow.antialias_sigma`'s choice and twice it), and for the
    rule (`rflow.estimate(detail=s)`). codec: SR inputs go through H.264 first. Prints and
    returns the rows."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, clips in pairs(size, count).items():
            for factor in (*factors, None):  # None: inpainting
                detail = factor or 1
                blurs = (0.0, detail / 4, detail / 2) if factor else (0.0,)
                settings = {f"level {lv}, σ {b:g}": dict(dis_level=lv, blur=b) for b in blurs for lv in levels}
                settings[f"rule (level {rflow.dis_finest_scale(detail)}, σ {rflow.antialias_sigma(detail):g})"] = {}
                errors = {k: [] for k in settings}
                for video, true in clips:
                    if factor is None:
                        op = inverse.Inpainting(inverse.parse_mask(HOLE, video.shape[-2:], video.shape[0]))
                    else:  # crop to a multiple of the factor
                        op = inverse.SuperResolution(factor, "bicubic")
                        h, w = (n - n % factor for n in video.shape[-2:])
                        video, true = video[..., :h, :w], true[..., :h, :w]
                    y = op.degrade(video)
                    images = op.baseline(h264(y, folder) if codec and factor else y)
                    for key, options in settings.items():
                        errors[key].append(epe(rflow.estimate(images[:-1], images[1:], detail=detail, **options), true))
                rows.append({"set": name, "task": f"SR ×{factor}" if factor else "inpaint",
                             **{k: float(np.mean(e)) for k, e in errors.items()}})
                print(f"| {name} | {rows[-1]['task']} | "
                      + " | ".join(f"{k}: {v:.3f}" for k, v in list(rows[-1].items())[2:]) + " |", flush=True)
    return rows


def format_table(rows: list[dict], header: bool = True) -> str:
    lines = ["| set | task | guide | estimator | EPE px | ms per pair |", "|---|---|---|---|---|---|"] if header else []
    lines += [f"| {r['set']} | {r['task']} | {r['guide']} | {r['estimator']} | {r['epe']:.3f} | {r['ms']:.1f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="side of the generated frames (output size)")
    p.add_argument("--pairs", type=int, default=8, help="held-out perspective pairs")
    p.add_argument("--detail-sweep", action="store_true",
                   help="instead: DIS medium's error for each finest pyramid level, with and without the anti-alias "
                        "blur, on SR ×2/×4/×8 and inpainting baselines")
    p.add_argument("--h264", action="store_true", help="with --detail-sweep: SR inputs go through H.264 (CRF 8) first")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"flow benchmark: {args.size}² generated frames, {args.pairs} perspective pairs; "
          f"device: {platform.processor() or 'CPU'}, 1 thread")
    if args.detail_sweep:
        return detail_sweep(args.size, args.pairs, args.h264)
    return benchmark(args.size, args.pairs)


if __name__ == "__main__":
    main()
