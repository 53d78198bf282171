"""Long-video benchmark: driver and encoder memory against video length; the shot scan.

    python -m raywarp.bench.long [--frames 300 3000] [--size 8 8] [--steps 1] [--scan-size 1080 1920]

The workload: one synthetic film per length, shots of real photographs (scikit-image)
with different motions and lengths (1 to 200 frames), at low resolution, restored by
SR x4 with a tiny random diffusers UNet built from config in few steps, so that the
cost is the pipeline's per-unit bookkeeping rather than the model. Each length runs
`raywarp run` in a fresh process, which reports its resident memory before the run
and the most it held during it, sampled every 20 ms (the driver: Ray's workers are
processes of their own); then the encoder (`stages.encode_units`) runs alone, in
another fresh process, over that run's payloads. Also reported: shots found against
shots made, and the shot scan's speed in one process, on these films and on a
120-frame film at `--scan-size`, beside decoding alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import platform
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import torch

from raywarp import synthetic

PHOTOS = ("coffee", "rocket", "chelsea", "astronaut")
# Per frame, gentle at 8 pixels (0.1 px there is a 13 px pan at 1080p): faster, content
# crossing a tiny frame changes like a cut.
MOTIONS = ({"shift": (0.1, 0.0)}, {"zoom": 1.003}, {"angle_deg": 0.3}, {"shift": (0.0, -0.1)})
SHOT_LENGTHS = (37, 120, 5, 1, 64, 200, 13, 90)


def make_film(path: Path, frames: int, size) -> int:
    """A film of `frames` frames cut from shots of SHOT_LENGTHS; returns the shot count.
    Rendered and encoded one shot at a time."""
    from raywarp.pipeline.encode import encode_video

    lengths = []
    while sum(lengths) < frames:
        lengths.append(min(SHOT_LENGTHS[len(lengths) % len(SHOT_LENGTHS)], frames - sum(lengths)))

    def shots():
        for k, n in enumerate(lengths):
            motion = synthetic.affine_motion(size, **MOTIONS[k % len(MOTIONS)])
            video, _ = synthetic.affine_video(PHOTOS[k % len(PHOTOS)], n, size, motion)
            yield from (video * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    encode_video(shots(), str(path), Fraction(24), crf=12)
    return len(lengths)


def scan_fps(path: Path, frames: int) -> tuple[float, int]:
    """(frames per second of the shot scan in this process, shots found)."""
    from raywarp.pipeline import shots as rshots

    start = time.perf_counter()
    spans = [rshots.scan_span(str(path), a, b, 27.0) for a, b in rshots.scan_spans(frames)]
    return frames / (time.perf_counter() - start), len(rshots.shots(frames, spans))


def decode_fps(path: Path) -> float:
    """Frames per second of decoding alone, as the scan decodes (frame threads)."""
    import av

    start = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = sum(1 for _ in container.decode(stream))
    return count / (time.perf_counter() - start)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRss:
    """The most resident memory this process held while inside the `with`, sampled."""

    def __enter__(self):
        self.before = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _run_child(src: str, dst: str, model: str, steps: int, out) -> None:
    from raywarp.pipeline.config import RunConfig
    from raywarp.pipeline.run import run
    from raywarp.sampler import SamplerConfig

    config = RunConfig(task="sr", scale=4, model=model, sampler=SamplerConfig(steps=steps), max_actors=1)
    start = time.perf_counter()
    with _PeakRss() as rss:
        summary = run(src, dst, config, quiet=True)
    out.put({"ok": summary.ok, "error": summary.format(), "seconds": time.perf_counter() - start,
             "units": summary.units_computed, "rss_before": rss.before, "rss_peak": rss.peak})


def _encode_child(dst: str, out) -> None:
    from raywarp.pipeline.manifest import Manifest
    from raywarp.pipeline.records import Unit, Video
    from raywarp.pipeline.stages import encode_units

    manifest = Manifest(dst)
    video = Video.from_row(manifest.read_table("videos").to_pylist()[0])
    units = sorted(map(Unit.from_row, manifest.read_table("clips").to_pylist()), key=lambda u: u.out_start)
    committed = manifest.committed()
    payloads = [(u.id, committed[u.id].checksum(u.id)) for u in units]
    with _PeakRss() as rss:
        row = encode_units(dataclasses.replace(video, output=f"{dst}/again.mp4"), payloads, dst, None, 99)
    out.put({"ok": row.status == "done", "error": row.error, "rss_before": rss.before, "rss_peak": rss.peak})


def _in_fresh_process(target, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=target, args=(*args, out))
    process.start()
    result = out.get()
    process.join()
    if not result["ok"]:
        raise RuntimeError(result["error"])
    return result


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=(300, 3000))
    p.add_argument("--size", type=int, nargs=2, default=(8, 8), metavar=("H", "W"), help="input (low-resolution) size")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--scan-size", type=int, nargs=2, default=(1080, 1920), metavar=("H", "W"))
    args = p.parse_args(argv)
    from diffusers import DDIMScheduler

    from raywarp.models import tiny_pixel_unet

    work = Path(tempfile.mkdtemp(prefix="raywarp-long-"))
    model = work / "tiny_model"
    tiny_pixel_unet(conditional=True).save_pretrained(model)
    DDIMScheduler(prediction_type="sample").save_pretrained(model)
    print(f"long-video benchmark: SR x4 of {args.size[0]}x{args.size[1]} films, tiny UNet, {args.steps} step(s); "
          f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores")
    rows = []
    for frames in args.frames:
        src = work / f"src{frames}"
        src.mkdir()
        made = make_film(src / "film.mp4", frames, tuple(args.size))
        fps, found = scan_fps(src / "film.mp4", frames)
        dst = str(work / f"dst{frames}")
        driver = _in_fresh_process(_run_child, str(src), dst, str(model), args.steps)
        encoder = _in_fresh_process(_encode_child, dst)
        rows.append({"frames": frames, "shots": made, "found": found, "scan_fps": fps, "units": driver["units"],
                     "seconds": driver["seconds"], "driver": driver, "encoder": encoder})
        print(f"  {frames} frames done in {driver['seconds']:.0f} s")
    print("\n| frames | shots made / found | units | run s | driver RSS before run MB | driver peak in run MB "
          "| encoder RSS before MB | encoder peak MB | scan frames/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, e = r["driver"], r["encoder"]
        print(f"| {r['frames']} | {r['shots']} / {r['found']} | {r['units']} | {r['seconds']:.0f} | {d['rss_before']:.0f} "
              f"| {d['rss_peak']:.0f} | {e['rss_before']:.0f} | {e['rss_peak']:.0f} | {r['scan_fps']:.0f} |")
    big = work / "big.mp4"
    made = make_film(big, 120, tuple(args.scan_size))
    fps, found = scan_fps(big, 120)
    print(f"shot scan at {args.scan_size[0]}x{args.scan_size[1]} (H.264): {fps:.0f} frames/s in one process "
          f"(decoding alone: {decode_fps(big):.0f}), {found} shots found of {made}")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        growth = (b["driver"]["rss_peak"] - b["driver"]["rss_before"]) - (a["driver"]["rss_peak"] - a["driver"]["rss_before"])
        print(f"{b['frames'] / a['frames']:.0f}x the frames: driver peak grows {growth:+.0f} MB more during the run, "
              f"encoder peak {b['encoder']['rss_peak'] - a['encoder']['rss_peak']:+.0f} MB")
    return rows


if __name__ == "__main__":
    main()
