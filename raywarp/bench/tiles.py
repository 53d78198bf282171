"""Tiling benchmark: cost, memory and quality of tiled denoising against frame size, and
of inpainting in a crop against the whole frame.

    python -m raywarp.bench.tiles [--sizes 256 512 1024] [--tiles 0 64 128 256] [--overlap 16]
                                  [--inpaint-sizes 256 512] [--frames 2] [--steps 4] [--model default]

SR ×4 of a held-out photograph panned by a sub-pixel translation, at each output size
(square), with the exact flow, by `sample_clip` (the run's defaults: warped, strength
0.4) with the denoiser untiled (tile 0) and tiled at each tile size (output pixels,
`--overlap` of overlap, 1/8 of the tile if not given); tiles not smaller than the frame
are skipped (they are the untiled run). Per size and tile: seconds per frame; peak
resident memory above the start of the call (CPU: sampled every 5 ms; CUDA: the
allocator's peak); the cost against untiled at the same size; the warping error, PSNR
against the ground truth, and the seam figure (`metrics.boundary_gradient` along the
tile edges, against the untiled output's along the same lines).

Inpainting: a small static hole in the same pan, restored in its crop at the model's
native size (`raywarp.tiles.hole_box`, `sampler.sample_crop`) and over the whole frame
(default tiles), with the run's re-estimation of flows at half the steps: s/frame, peak
memory, warping error and PSNR inside the hole.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import threading
import time

import torch

from raywarp import inverse, metrics, synthetic
from raywarp.cli import DEFAULT_MODE, REESTIMATE_FLOW_AT
from raywarp import tiles as rtiles
from raywarp.models import load_denoiser, noise_spec
from raywarp.sampler import SamplerConfig, sample_clip, sample_crop

VELOCITY = (1.5, 0.75)  # output pixels per frame
HOLE = "rect:0.45,0.4,0.55,0.6"  # the inpainting comparison's hole: 10 % × 20 % of the frame


class PeakMemory:
    """Peak memory of a block above its start: the CUDA allocator's, or on a CPU the
    process's resident set sampled every 5 ms (freed heap handed back first, so a
    previous block's high water does not hide this one's)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start, self.peak, self._done = self._rss(), self._rss(), threading.Event()

        def sample():
            while not self._done.wait(0.005):
                self.peak = max(self.peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._done.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def panned(size: int, frames: int):
    """(video (T, 3, S, S), fwd, bwd): a held-out photograph panned by VELOCITY, exact flows."""
    shape = (size, size)
    photo = synthetic.HELDOUT_PHOTOS[0]
    zoom = 0.9 * min(synthetic.load_photo(photo).shape[:2]) / size
    motion = synthetic.affine_motion(shape, shift=VELOCITY)
    video, fwd = synthetic.affine_video(photo, frames, shape, motion, zoom=zoom)
    bwd = synthetic.affine_backward_flow(motion, shape).expand(frames - 1, -1, -1, -1).contiguous()
    return video, fwd, bwd


def run_sampler(args, task: str) -> SamplerConfig:
    """What `raywarp run` samples `task` with on the model (`raywarp.cli`'s defaults), at the
    benchmark's steps, all its frames in one batch."""
    spec = noise_spec(args.model)
    return SamplerConfig(mode=DEFAULT_MODE[spec["noise"]], steps=args.steps, batch_size=args.frames,
                         length_scale=spec.get("length_scale", SamplerConfig.length_scale),
                         num_features=spec.get("num_features", SamplerConfig.num_features),
                         reestimate_flow_at=REESTIMATE_FLOW_AT.get(task, 0.0))


def benchmark(args) -> list[dict]:
    denoiser = load_denoiser(args.model, device=args.device)
    config = run_sampler(args, "sr")
    op = inverse.SuperResolution(4, "bicubic")
    warm = panned(32, 2)  # one-time allocations and kernel choices, outside every measurement
    sample_clip(denoiser, op, op.degrade(warm[0]), *warm[1:], seed=0, config=config, device=args.device)
    rows = []
    for size in args.sizes:
        video, fwd, bwd = panned(size, args.frames)
        y = op.degrade(video)
        untiled = None
        for tile in args.tiles:
            if tile and tile >= size:
                continue
            overlap = args.overlap if args.overlap is not None else tile // 8
            denoiser.enable_tiling(tile, overlap, batch=args.frames)
            with PeakMemory(torch.device(args.device)) as memory:
                start = time.perf_counter()
                out = sample_clip(denoiser, op, y, fwd, bwd, seed=0, config=config, device=args.device).frames
                seconds = (time.perf_counter() - start) / args.frames
            row = {"size": size, "tile": tile, "overlap": overlap if tile else 0, "s/frame": seconds,
                   "peak MiB": memory.mib, "warp": float(metrics.warping_error(out, fwd, bwd)),
                   "psnr": float(metrics.psnr(out, video))}
            if tile == 0:
                untiled = (out, seconds)
            elif untiled is not None:
                edges = rtiles.layout(size, size, *denoiser.tiling, denoiser.multiple).edges(size, size)
                row["cost"] = seconds / untiled[1]
                row["seam"] = metrics.boundary_gradient(out, *edges) / metrics.boundary_gradient(untiled[0], *edges)
            rows.append(row)
            print(format_table(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def inpainting(args) -> list[dict]:
    """A small static hole (HOLE) at each size: sampled in its crop (`tiles.hole_box`, as
    `raywarp run` does by default) and over the whole frame (at the default tile)."""
    denoiser = load_denoiser(args.model, device=args.device).enable_tiling(batch=args.frames)
    config = run_sampler(args, "inpaint")
    rows = []
    for size in args.inpaint_sizes:
        video, fwd, bwd = panned(size, args.frames)
        mask = inverse.parse_mask(HOLE, (size, size), args.frames)
        op = inverse.Inpainting(mask)
        y = op.degrade(video)
        native = denoiser.default_tiling()[0]
        box = rtiles.hole_box(mask, native, native // 4, denoiser.scale_factor * denoiser.multiple)
        for area in ("crop", "frame") if box is not None else ("frame",):  # no box: the crop is the frame
            with PeakMemory(torch.device(args.device)) as memory:
                start = time.perf_counter()
                if area == "crop":
                    out = sample_crop(box, denoiser, op, y, fwd, bwd, seed=0, config=config, device=args.device).frames
                else:
                    out = sample_clip(denoiser, op, y, fwd, bwd, seed=0, config=config, device=args.device).frames
                seconds = (time.perf_counter() - start) / args.frames
            hole = (1 - mask).expand_as(video).bool()
            rows.append({"size": size, "area": f"crop {box.height}×{box.width}" if area == "crop" else "whole frame",
                         "s/frame": seconds, "peak MiB": memory.mib, "warp": float(metrics.warping_error(out, fwd, bwd)),
                         "psnr": float(-10 * torch.log10((out - video)[hole].square().mean()))})
            print(format_inpainting(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def format_inpainting(rows: list[dict], header: bool = True) -> str:
    lines = ["| frame | sampled | s/frame | peak memory MiB | warping error | PSNR dB in the hole |",
             "|---|---|---|---|---|---|"] if header else []
    for r in rows:
        lines.append(f"| {r['size']}² | {r['area']} | {r['s/frame']:.2f} | {r['peak MiB']:.0f} | {r['warp']:.6f} "
                     f"| {r['psnr']:.2f} |")
    return "\n".join(lines)


def format_table(rows: list[dict], header: bool = True) -> str:
    lines = ["| output | tile (overlap) | s/frame | peak memory MiB | cost × untiled | warping error | PSNR dB | seam × untiled |",
             "|---|---|---|---|---|---|---|---|"] if header else []
    for r in rows:
        tile = "untiled" if not r["tile"] else f"{r['tile']} ({r['overlap']})"
        cost, seam = (f"{r[k]:.2f}" if k in r else "" for k in ("cost", "seam"))
        lines.append(f"| {r['size']}² | {tile} | {r['s/frame']:.2f} | {r['peak MiB']:.0f} | {cost} | {r['warp']:.6f} "
                     f"| {r['psnr']:.2f} | {seam} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024], help="output sides of the SR comparison (none: skip it)")
    p.add_argument("--tiles", type=int, nargs="+", default=[0, 64, 128, 256], help="tile sides in output pixels; 0: untiled")
    p.add_argument("--overlap", type=int, help="output pixels of overlap; default 1/8 of each tile")
    p.add_argument("--inpaint-sizes", type=int, nargs="*", default=[256, 512],
                   help="frame sides of the inpainting comparison, crop against whole frame (none: skip it)")
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    print(f"tiling benchmark: SR ×4, {args.frames} frames, {args.steps} steps, model {args.model}; "
          f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads) / {args.device}")
    rows = benchmark(args)
    return rows + inpainting(args) if args.inpaint_sizes else rows


if __name__ == "__main__":
    main()
