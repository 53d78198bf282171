"""Sampler benchmark: temporal consistency and fidelity of each sampling mode.

    python -m raywarp.bench.sampler [--frames 6] [--size 64] [--steps 20] [--model default] [--flow estimated|exact]
                                    [--flow-from baseline|input] [--tasks sr inpaint] [--modes ...]
                                    [--translation DX DY] [--no-propagate]

Short videos of held-out photographs with known motion (integer translation, rotation,
zoom, a moving layer over a moving background; or, with --translation, that one
translation), restored by SR ×4 (bicubic degradation) and inpainting (a static hole).
The sampler sees what a user's pipeline sees: flow estimated (DIS) on the baseline
restoration, densified (neuroexplicit) where it fails the forward–backward check or was
not matched between observed pixels. `--flow exact` hands the sampler the true flow
instead, which separates what the sampler does from what flow estimation on tiny frames
costs. For SR, `--flow-from input` estimates on the low-resolution input instead of the
bicubic baseline (the pipeline's `flow_from`). Metrics against the ground truth: warping error
(Lai et al., with the exact flow), PSNR, SSIM, measurement error (RMS of A x − y),
seconds per frame; for the estimated flow, its EPE against the exact forward flow and
the seconds per frame it took (estimation and densification, both ways).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from raywarp import flow as rflow
from raywarp import inverse, metrics, synthetic
from raywarp.models import load_denoiser, noise_spec
from raywarp.sampler import GUIDANCE_METHODS, GUIDED, MODES, SCHEDULES, SamplerConfig, sample_clip


def scenes(frames: int, size, translation=None) -> dict[str, tuple]:
    """{name: (video (T,3,H,W), exact forward flows, exact backward flows)} of held-out photographs.

    translation: (dx, dy) output pixels per frame: only that translation, as one scene.
    """
    if translation is not None:
        motions = [(f"translation {tuple(translation)}", "coffee", synthetic.affine_motion(size, shift=tuple(translation)))]
    else:
        motions = [
            ("translation", "coffee", synthetic.affine_motion(size, shift=(2.0, 1.0))),
            ("rotation", "rocket", synthetic.affine_motion(size, angle_deg=2.0)),
            ("zoom", "coffee", synthetic.affine_motion(size, zoom=1.03)),
        ]
    out = {}
    for name, photo, motion in motions:
        video, fwd = synthetic.affine_video(photo, frames, size, motion)
        out[name] = (video, fwd, synthetic.affine_backward_flow(motion, size).expand(frames - 1, -1, -1, -1).clone())
    if translation is None:
        out["moving layer"] = synthetic.layered_video(frames, size)
    return out


def evaluate(frames, video, fwd_true, bwd_true, op, y) -> dict:
    return {
        "warp": float(metrics.warping_error(frames, fwd_true, bwd_true)),
        "psnr": float(metrics.psnr(frames, video)),
        "ssim": float(metrics.ssim(frames, video)),
        "meas": op.measurement_error(frames, y),
    }


def benchmark(args) -> list[dict]:
    denoiser = load_denoiser(args.model)
    spec = noise_spec(args.model)
    size = (args.size, args.size)
    rows = []
    tasks = {"sr": "SR ×4", "inpaint": "inpaint"}
    for scene, (video, fwd_true, bwd_true) in scenes(args.frames, size, args.translation).items():
        observed = inverse.parse_mask("rect:0.35,0.3,0.65,0.6", size, args.frames)  # 0 in the hole
        ops = {"sr": inverse.SuperResolution(4, "bicubic"), "inpaint": inverse.Inpainting(observed)}
        for task, op in ((tasks[t], ops[t]) for t in args.tasks):
            y = op.degrade(video)
            baseline = op.baseline(y)
            flow_info = {"epe": 0.0, "flow s/frame": 0.0}
            if args.flow == "estimated":
                start = time.perf_counter()
                if args.flow_from == "input" and task == tasks["sr"]:
                    fwd, bwd = rflow.restoration_flows(y, torch.ones(y.shape[0], 1, *y.shape[-2:]), size)
                else:
                    fwd, bwd = rflow.restoration_flows(baseline, op.known(y), detail=getattr(op, "scale", 1))
                flow_info = {"epe": float(metrics.epe(fwd, fwd_true)), "flow s/frame": (time.perf_counter() - start) / args.frames}
            else:
                fwd, bwd = fwd_true, bwd_true
            rows.append({"scene": scene, "task": task, "mode": "baseline", "s/frame": 0.0, **flow_info,
                         **evaluate(baseline, video, fwd_true, bwd_true, op, y)})
            if args.propagate and task == tasks["inpaint"]:  # the classical video inpainting: carry, then fill
                carried_op, carried = op.propagated(y, fwd, bwd)
                rows.append({"scene": scene, "task": task, "mode": "baseline (propagated)", "s/frame": 0.0, **flow_info,
                             **evaluate(carried_op.baseline(carried), video, fwd_true, bwd_true, op, y)})
            variants = [(m, g) for m in args.modes for g in (args.guidance_methods if m in GUIDED else [None])]
            for mode, method in variants:
                cfg = SamplerConfig(mode=mode, steps=args.steps, guidance=args.guidance, strength=args.strength,
                                    guidance_method=method or "gradient", guidance_schedule=args.guidance_schedule,
                                    length_scale=spec.get("length_scale", SamplerConfig.length_scale), batch_size=args.frames,
                                    reestimate_flow_at=args.reestimate_flow_at, propagate=args.propagate)
                start = time.perf_counter()
                out = sample_clip(denoiser, op, y, fwd, bwd, seed=args.seed, config=cfg).frames
                seconds = (time.perf_counter() - start) / args.frames
                label = f"{mode} ({method})" if method and len(args.guidance_methods) > 1 else mode
                rows.append({"scene": scene, "task": task, "mode": label, "s/frame": seconds, **flow_info,
                             **evaluate(out, video, fwd_true, bwd_true, op, y)})
            n = len(variants) + 1 + (args.propagate and task == tasks["inpaint"])
            print(format_table(rows[-n:], header=not rows[:-n]), flush=True)
    return rows


def format_table(rows: list[dict], header: bool = True) -> str:
    lines = ["| scene | task | mode | warping error | PSNR dB | SSIM | measurement error | s/frame | flow EPE | flow s/frame |",
             "|---|---|---|---|---|---|---|---|---|---|"] if header else []
    for r in rows:
        lines.append(f"| {r['scene']} | {r['task']} | {r['mode']} | {r['warp']:.5f} | {r['psnr']:.2f} | {r['ssim']:.3f} "
                     f"| {r['meas']:.4f} | {r['s/frame']:.2f} | {r['epe']:.3f} | {r['flow s/frame']:.3f} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per task and mode: means of warping error, PSNR, flow EPE and time; the cost per
    frame relative to gp-warp's in the same run."""
    lines = ["| task | mode | mean warping error | mean PSNR dB | mean flow EPE | flow s/frame | s/frame | cost × gp-warp |",
             "|---|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        seconds = {}
        for mode in dict.fromkeys(r["mode"] for r in rows if r["task"] == task):
            sel = [r for r in rows if r["task"] == task and r["mode"] == mode]
            seconds[mode] = np.mean([r["s/frame"] for r in sel])
            ratio = f"{seconds[mode] / seconds['gp-warp']:.2f}" if seconds.get("gp-warp") and mode != "baseline" else ""
            lines.append(f"| {task} | {mode} | {np.mean([r['warp'] for r in sel]):.5f} | {np.mean([r['psnr'] for r in sel]):.2f} "
                         f"| {np.mean([r['epe'] for r in sel]):.3f} | {np.mean([r['flow s/frame'] for r in sel]):.3f} "
                         f"| {seconds[mode]:.3f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=0.1)
    p.add_argument("--guidance-methods", nargs="+", choices=GUIDANCE_METHODS, default=[SamplerConfig.guidance_method],
                   help="self-guidance through the denoiser's gradient and/or on x̂0 (one row each)")
    p.add_argument("--guidance-schedule", choices=SCHEDULES, default=SamplerConfig.guidance_schedule)
    p.add_argument("--strength", type=float, default=SamplerConfig.strength, help="1: from noise; < 1: refine the noised baseline")
    p.add_argument("--flow", choices=("estimated", "exact"), default="estimated", help="flow the sampler is given")
    p.add_argument("--flow-from", choices=("baseline", "input"), default="baseline", help="SR: estimate on the baseline or the LR input")
    p.add_argument("--tasks", nargs="+", choices=("sr", "inpaint"), default=("sr", "inpaint"))
    p.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    p.add_argument("--reestimate-flow-at", type=float, default=SamplerConfig.reestimate_flow_at,
                   help="re-estimate self-guidance's flows on x̂0 after this fraction of the steps (0: never)")
    p.add_argument("--propagate", action=argparse.BooleanOptionalAction, default=SamplerConfig.propagate,
                   help="inpainting: copy what the flow traces to another frame's observed pixels before sampling")
    p.add_argument("--translation", type=float, nargs=2, metavar=("DX", "DY"),
                   help="only a translation by (DX, DY) output pixels per frame (multiples of 4: whole input pixels for SR ×4)")
    p.add_argument("--model", default="default")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"sampler benchmark: {args.frames} frames at {args.size}², {args.steps} DDIM steps, λ = {args.guidance}, strength {args.strength}, {args.flow} flow (from {args.flow_from}), "
          f"model {args.model}; device: {platform.processor() or 'CPU'}, {torch.get_num_threads()} threads")
    rows = benchmark(args)
    print("\n" + summary(rows))
    return rows


if __name__ == "__main__":
    main()
