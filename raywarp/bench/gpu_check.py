"""The prepared GPU check: what a GPU node does with raywarp, in one command of two parts.

    python -m raywarp.bench.gpu_check --out DIR [--part models|pipeline|all] [--tiny]
                                      [--models M ...] [--no-compile] [--budget SECONDS] [--commit SHA]

--part models (torch and diffusers only):
  * the environment: GPU, driver, torch, CUDA, cuDNN;
  * `raywarp.bench.gpu` rows on random-weight, architecture-true models: the SD ×4
    upscaler (128² → 512²) and SDXL (1024²), each mode, at fp32 and bf16 (what `raywarp
    run --precision` does), and torch.compile for one configuration: s/frame, the
    denoiser's share of the time, peak GPU memory;
  * host syncs per sampler step, from a profiler trace (steps 4 against steps 2, so what
    a call does once cancels), and where in the code they come from;
  * flow estimation (OpenCV DIS, on the CPU) and densification (on the device) at 1080p;
  * `raywarp.bench.gpu --tiled` at bf16, warped: the upscaler at its native 512² (one
    tile), 540p → 2160p and SDXL inpainting at 1080p in tiles, with peak memory against
    the native size's.
--part pipeline (Ray and PyAV too):
  * `raywarp run` end to end on an embedded Ray with `--gpus-per-actor 1`: SR ×4 of a
    generated 32-frame 180×320 clip to 720×1280 with the random SD ×4 upscaler folder;
    frames/s over the processing span, GPU busy (NVML, sampled), peak GPU memory, the
    outputs checked, and the pipeline's frames/s over the standalone sampler's on the
    same model, size and settings (pipeline efficiency).

Each part writes DIR/gpu_check_<part>.md (tables) and .json (every figure) after every
row, so a run stopped at its time limit keeps what it measured; rows that would start
after `--budget` seconds are listed as skipped. `--tiny` runs the same steps with narrow
models at tiny sizes on the CPU: the test suite's dry run, so the check cannot rot.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from raywarp import inverse
from raywarp.bench import gpu
from raywarp.sampler import SamplerConfig, sample_clip

STARTED = time.perf_counter()
PARTS = ("models", "pipeline")
STEPS = 10  # DDIM steps of every timed call (strength 0.4, as `raywarp run` samples by default)


@dataclass(frozen=True)
class Sizes:
    """What the check runs at: the real sizes on a GPU, tiny ones for the CPU dry run."""

    frames: dict  # frames per timed clip, by model
    flow_size: tuple[int, int]  # (H, W) of the flow and densification timings
    pipeline_lr: tuple[int, int]  # (H, W) of the pipeline's input video
    pipeline_frames: int
    clip_len: int
    overlap: int
    steps: int = STEPS


REAL = Sizes(frames={"sd-x4-upscaler": 8, "sdxl-base": 4}, flow_size=(1080, 1920), pipeline_lr=(180, 320),
             pipeline_frames=32, clip_len=16, overlap=4)
TINY = Sizes(frames={"sd-x4-upscaler": 3, "sdxl-base": 3}, flow_size=(48, 64), pipeline_lr=(16, 24),
             pipeline_frames=8, clip_len=5, overlap=1, steps=2)


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    """Sections of rows, written to DIR/gpu_check_<part>.{md,json} after every row."""

    out: Path
    part: str
    header: dict
    sections: dict = field(default_factory=dict)  # title -> list of row dicts

    def add(self, section: str, row: dict) -> None:
        self.sections.setdefault(section, []).append(row)
        print(f"[{time.perf_counter() - STARTED:.0f} s] [{section}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        stem = self.out / f"gpu_check_{self.part}"
        stem.with_suffix(".json").write_text(json.dumps({**self.header, "sections": self.sections}, indent=1, default=str))
        lines = [f"# raywarp GPU check: {self.part}", ""] + [f"- {k}: {_fmt(v)}" for k, v in self.header.items()]
        for title, rows in self.sections.items():
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["", f"## {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


class Budget:
    """Seconds left for a part; rows that would start after it are skipped, not run."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def allows(self, report: Report, section: str, what: dict) -> bool:
        if time.perf_counter() < self.end:
            return True
        report.add(section, {**what, "skipped": "time budget spent"})
        return False


def environment(device: torch.device, commit: str) -> dict:
    """The machine and software the figures come from."""
    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "none",
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none",
           "cpus": os.cpu_count(), "device": gpu.device_name(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                   driver=_driver_version())
    return env


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- part 1: models


def timed_row(denoiser, inputs, mode: str, steps: int, frames_batch: int) -> dict:
    """`bench.gpu.time_mode` on an accelerated denoiser, an OOM as a row."""
    timer = gpu.NetworkTimer(denoiser)
    try:
        row = gpu.time_mode(denoiser, timer, inputs, mode, steps, frames_batch)
    except torch.OutOfMemoryError:
        _free(denoiser.device)
        row = {"s/frame": math.nan, "denoiser share": math.nan, "peak GiB": None, "error": "out of memory"}
    finally:
        denoiser.unet_call = timer.network
    return row


SECTION_MODELS = "bench.gpu: seconds per frame"


def model_rows(report: Report, budget: Budget, sizes: Sizes, device: torch.device, tiny: bool, models) -> None:
    """Every model × precision × mode."""
    section = SECTION_MODELS
    sides = gpu.TINY_OUTPUT_SIDES if tiny else gpu.OUTPUT_SIDES
    modes = ("independent", "warped", "white-warped")
    for model in models:
        frames, side = sizes.frames[model], sides[model]
        denoiser = gpu.build_denoiser(gpu.load_configs(model, tiny), device, torch.float32)
        inputs = gpu.clip_inputs(denoiser, side, frames)
        for precision in ("fp32", "bf16"):
            denoiser.accelerate(precision=precision, channels_last=True)
            for mode in modes:
                what = {"model": model, "size": f"{side // gpu.SCALE}²→{side}²", "precision": precision,
                        "weights": _dtype_name(denoiser.dtype), "compile": False, "mode": mode}
                if budget.allows(report, section, what):
                    report.add(section, {**what, **timed_row(denoiser, inputs, mode, sizes.steps, 8)})
        del denoiser
        _free(device)


SECTION_TILED = "bench.gpu --tiled: production sizes in tiles"


def tiled_rows(report: Report, budget: Budget, sizes: Sizes, device: torch.device, tiny: bool) -> None:
    """The TILED workloads of `bench.gpu` at bf16, warped; peak memory against the first's
    (the upscaler's native 512², one tile)."""
    reference = None
    for name in gpu.TILED:
        what = {"workload": name, "precision": "bf16", "mode": "warped"}
        if not budget.allows(report, SECTION_TILED, what):
            continue
        denoiser, inputs, op, label = gpu.tiled_workload(name, tiny, device, "bf16", frames=sizes.frames["sd-x4-upscaler"])
        timer = gpu.NetworkTimer(denoiser)
        try:
            row = gpu.time_mode(denoiser, timer, inputs, "warped", sizes.steps, 8, op)
        except torch.OutOfMemoryError:
            _free(device)
            row = {"s/frame": math.nan, "denoiser share": math.nan, "peak GiB": None, "error": "out of memory"}
        reference = reference or row["peak GiB"]
        ratio = row["peak GiB"] / reference if row["peak GiB"] and reference else None
        report.add(SECTION_TILED, {**what, "workload": label, **row, "peak × native 512²": ratio})
        del denoiser, timer, inputs
        _free(device)


def compile_rows(report: Report, budget: Budget, sizes: Sizes, device: torch.device, tiny: bool,
                 with_compile: bool) -> None:
    """The SD ×4 upscaler at bf16, warped: the host-sync trace, then torch.compile."""
    model = "sd-x4-upscaler"
    side = (gpu.TINY_OUTPUT_SIDES if tiny else gpu.OUTPUT_SIDES)[model]
    frames = sizes.frames[model]
    what = {"model": model, "size": f"{side // gpu.SCALE}²→{side}²", "precision": "bf16", "weights": "bf16",
            "compile": True, "mode": "warped"}
    if not budget.allows(report, SECTION_SYNCS, {"what": "sync calls"}):
        return
    denoiser = gpu.build_denoiser(gpu.load_configs(model, tiny), device, torch.bfloat16).accelerate("bf16", True)
    inputs = gpu.clip_inputs(denoiser, side, frames)
    sync_rows(report, denoiser, inputs)
    if with_compile and budget.allows(report, SECTION_MODELS, what):
        denoiser.accelerate("bf16", compile=True, compile_backend="eager" if tiny else "inductor")
        row = timed_row(denoiser, inputs, "warped", sizes.steps, 8)
        # A clip of another length must not compile the network again per length.
        before = _graphs()
        gpu.time_mode(denoiser, gpu.NetworkTimer(denoiser), gpu.clip_inputs(denoiser, side, frames + 2), "warped", 2, 8)
        report.add(SECTION_MODELS, {**what, **row, "graphs compiled for a new clip length": _graphs() - before})
    del denoiser
    _free(device)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def top_ops(report: Report, section: str, denoiser, inputs, mode: str, count: int = 12) -> None:
    """The operators a 2-step `sample_clip` spends its time in, by device time (CPU time on a CPU)."""
    observations, forward, backward = inputs
    cuda = denoiser.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        sample_clip(denoiser, inverse.SuperResolution(gpu.SCALE, "bicubic"), observations, forward, backward, seed=0,
                    config=SamplerConfig(mode=mode, steps=2, batch_size=8), device=denoiser.device)
    _sync(denoiser.device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    # The operators (their kernels' time counted to them), not the kernels again.
    ops = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CPU]
    events = sorted(ops, key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    for e in events[:count]:
        report.add(section, {"op": e.key[:60], "ms": getattr(e, key) / 1000, "share": getattr(e, key) / total, "calls": e.count})


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
SECTION_SYNCS = "host syncs per step (profiler)"


def sync_rows(report: Report, denoiser, inputs) -> None:
    """Host syncs per sampler step (profiler trace, steps 4 against steps 2) and the lines
    that caused them (torch's sync debug mode)."""
    section = SECTION_SYNCS
    observations, forward, backward = inputs
    op = inverse.SuperResolution(gpu.SCALE, "bicubic")
    counts = {}
    for steps in (2, 4):
        config = SamplerConfig(mode="warped", steps=steps, batch_size=8)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if denoiser.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            sample_clip(denoiser, op, observations, forward, backward, seed=0, config=config, device=denoiser.device)
        events = collections.Counter()
        for e in prof.events():
            if e.name in SYNC_CALLS:
                events["sync calls"] += 1
            elif "Memcpy DtoH" in e.name:
                events["device-to-host copies"] += 1
        counts[steps] = events
    for kind in ("sync calls", "device-to-host copies"):
        report.add(section, {"what": kind, "per call (steps 2)": counts[2][kind],
                             "per step": (counts[4][kind] - counts[2][kind]) / 2})
    if denoiser.device.type != "cuda":
        return
    where = collections.Counter()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sample_clip(denoiser, op, observations, forward, backward, seed=0,
                            config=SamplerConfig(mode="warped", steps=2, batch_size=8), device=denoiser.device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            where[f"{Path(w.filename).name}:{w.lineno}"] += 1
    for place, n in where.most_common(12):
        report.add("host syncs by line (sync debug mode, 2 steps)", {"line": place, "syncs": n})


def flow_rows(report: Report, budget: Budget, sizes: Sizes, device: torch.device) -> None:
    """ms per frame of DIS (CPU) both ways, densification on the device, and the whole
    `restoration_flows`, on a photograph panned at `sizes.flow_size` with holes in the mask."""
    from raywarp import flow as rflow
    from raywarp.densify import densify

    section = f"flows at {sizes.flow_size[1]}×{sizes.flow_size[0]}: ms per frame"
    if not budget.allows(report, section, {"what": "flows"}):
        return
    frames = 5
    video = gpu.panned_video(sizes.flow_size, frames)
    a, b = video[:-1], video[1:]
    fwd = rflow.estimate(a, b)
    bwd = rflow.estimate(b, a)
    known = rflow.consistency_mask(fwd, bwd)
    h, w = sizes.flow_size  # holes: what an inpainting run or an occlusion leaves (about 15 %)
    known[:, :, h // 4 : h // 2, w // 3 : w // 2] = 0
    known[:, :, 2 * h // 3 : 5 * h // 6, w // 8 : w // 3] = 0
    observed = torch.ones(frames, 1, h, w)
    on = {"image": a.to(device), "flow": fwd.to(device), "mask": known.to(device)}

    def timed(fn, repeats=3) -> float:
        fn()  # warm-up: cuDNN autotuning, the densifier's weights
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return 1000 * float(np.median(times)) / (frames - 1)

    rows = [("DIS estimate, one direction (OpenCV, CPU)", "cpu", lambda: rflow.estimate(a, b)),
            ("densify neuroexplicit (mirror-averaged)", device.type,
             lambda: densify(on["flow"], on["mask"], on["image"])),
            ("densify laplace", device.type, lambda: densify(on["flow"], on["mask"], on["image"], method="laplace")),
            ("restoration_flows (both ways, densified)", f"cpu + {device.type}",
             lambda: rflow.restoration_flows(video.to(device), observed.to(device)))]
    for what, where, fn in rows:
        if budget.allows(report, section, {"what": what}):
            with torch.no_grad():
                report.add(section, {"what": what, "on": where, "ms/frame": timed(fn),
                                     "unknown flow": float(1 - known.mean())})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- part 2: pipeline


class GpuSampler:
    """NVML readings (time, utilisation %, memory used GiB) every `interval` s in a thread;
    no readings without NVML or a GPU."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML, no GPU: the figures say n/a
            self._nvml = None

    def __enter__(self):
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._nvml is not None:
            self._thread.join()

    def _loop(self):
        while not self._stop.wait(self.interval):
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**30
            self.samples.append((time.time(), util, used))

    def busy(self, start: float, stop: float) -> float:
        within = [u for t, u, _ in self.samples if start <= t <= stop]
        return float(np.mean(within)) / 100 if within else math.nan

    def peak_gib(self) -> float:
        return max((m for _, _, m in self.samples), default=math.nan)


def make_clip(folder: Path, sizes: Sizes) -> Path:
    """The pipeline's input: `gpu.panned_video` at 4× the input size, downscaled ×4, H.264."""
    from raywarp.pipeline.encode import encode_video
    from raywarp.tensors import tensor_to_frames

    h, w = sizes.pipeline_lr
    video = gpu.panned_video((4 * h, 4 * w), sizes.pipeline_frames)
    lr = inverse.SuperResolution(gpu.SCALE, "bicubic").degrade(video)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "clip.mp4"
    encode_video(iter(tensor_to_frames(lr)), str(path), Fraction(24), crf=12)
    return path


def pipeline_rows(report: Report, budget: Budget, sizes: Sizes, device: torch.device, tiny: bool, work: Path) -> None:
    from raywarp.cli import main as raywarp_main
    from raywarp.models import load_denoiser
    from raywarp.pipeline.decode import decode_span
    from raywarp.pipeline.manifest import Manifest
    from raywarp.pipeline.source import probe

    h, w = sizes.pipeline_lr
    size = f"{w}×{h}→{4 * w}×{4 * h}"
    model_dir = gpu.save_random_pipeline("sd-x4-upscaler", work / "sd-x4-upscaler", tiny, device, torch.float16)
    src = make_clip(work / "src", sizes)
    precision = "bf16" if device.type == "cuda" else "fp32"

    # The standalone sampler: one clip of clip_len frames, loaded and accelerated as a worker does.
    section = "standalone sampler (same model, size, settings)"
    denoiser = load_denoiser(str(model_dir), device=device)
    if device.type == "cuda":
        denoiser.accelerate(precision, channels_last=True)
    m = denoiser.scale_factor * denoiser.multiple  # the pipeline pads the output to this multiple, and so does this
    inputs = gpu.clip_inputs(denoiser, (-(-4 * h // m) * m, -(-4 * w // m) * m), sizes.clip_len)
    standalone = timed_row(denoiser, inputs, "white-warped", sizes.steps, 8)
    report.add(section, {"size": size, "frames": sizes.clip_len, "mode": "white-warped", "precision": precision,
                         **standalone})
    top_ops(report, "standalone sampler: top operators (2 steps)", denoiser, inputs, "white-warped")
    del denoiser, inputs
    _free(device)

    section = "raywarp run (embedded Ray)"
    if not budget.allows(report, section, {"size": size}):
        return
    dst = work / "out"
    args = ["run", str(src.parent), "--out", str(dst), "--task", "sr", "--scale", "4", "--model", str(model_dir),
            "--steps", str(sizes.steps), "--clip-len", str(sizes.clip_len), "--overlap", str(sizes.overlap),
            "--precision", precision, "--min-actors", "1", "--max-actors", "1",
            "--gpus-per-actor", "1" if device.type == "cuda" else "0",
            "--actor-cpus", str(max(1, (os.cpu_count() or 2) // 2))]
    with GpuSampler() as sampler:
        t0 = time.perf_counter()
        code = raywarp_main(args)
        wall = time.perf_counter() - t0
    manifest = Manifest(str(dst))
    rows = list(manifest.latest().values())
    units = [r for r in rows if r["kind"] != "video"]
    videos = [r for r in rows if r["kind"] == "video"]
    first, stop = min(r["started_at"] for r in units), max(r["finished_at"] for r in rows)
    out = probe(str(dst / "clip.mp4")) if videos and videos[0]["status"] == "done" else None
    last = decode_span(str(dst / "clip.mp4"), out.frames - 1, out.frames) if out else None
    errors = [json.loads(r["metrics"] or "{}").get("measurement_error", math.nan) for r in units]
    # Processing: from the worker's first sampling (its models loaded; the flows of that
    # unit just before) to the last output written.
    start = min(r["finished_at"] - r["seconds_write"] - r["seconds_sample"] - r["seconds_flow"] for r in units)
    fps = sizes.pipeline_frames / (stop - start)
    for r in sorted(units, key=lambda r: r["started_at"]):  # seconds from the first unit's start
        report.add("raywarp run: units", {
            "kind": r["kind"], "frames": r["frames"], "started s": r["started_at"] - first,
            "decode s": r["seconds_decode"], "flow s": r["seconds_flow"], "sample s": r["seconds_sample"],
            "write s": r["seconds_write"], "finished s": r["finished_at"] - first})
    report.add(section, {
        "size": size, "frames": sizes.pipeline_frames, "exit code": code, "units": len(units),
        "units done": sum(r["status"] == "done" for r in units), "wall s (Ray start included)": wall,
        "worker start s (first unit → first sampling)": start - first, "processing s": stop - start, "frames/s": fps, "GPU busy": sampler.busy(start, stop),
        "peak GPU GiB (NVML, device-wide)": sampler.peak_gib(),
        "sample s (sum over units)": sum(r.get("seconds_sample") or 0 for r in units),
        "flow s (sum over units)": sum(r.get("seconds_flow") or 0 for r in units),
        "pipeline / standalone frames/s": fps * standalone["s/frame"],
        "output frames": out and out.frames, "output size": f"{out.width}×{out.height}" if out else None,
        "outputs ok": bool(out) and out.frames == sizes.pipeline_frames and (out.height, out.width) == (4 * h, 4 * w)
                      and all(math.isfinite(e) for e in errors) and float(last.std()) > 0,
        "max measurement error": max(errors, default=math.nan),
    })


# --------------------------------------------------------------------------- main


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None) -> dict[str, Report]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check_<part>.md and .json")
    p.add_argument("--part", choices=(*PARTS, "all"), default="all")
    p.add_argument("--tiny", action="store_true", help="narrow models, tiny sizes: the CPU dry run")
    p.add_argument("--models", nargs="+", choices=gpu.MODELS, default=gpu.MODELS, help="models of the precision grid")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="the torch.compile row (minutes on a GPU)")
    p.add_argument("--budget", type=float, default=270.0, help="seconds per part after which rows are skipped")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--commit", default=os.environ.get("RAYWARP_COMMIT") or _commit())
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sizes = TINY if args.tiny else REAL
    env = environment(device, args.commit)
    reports = {}
    for part in PARTS if args.part == "all" else (args.part,):
        report = Report(args.out, part, {**env, "part": part, "tiny": args.tiny, "steps": sizes.steps})
        report.write()
        budget = Budget(args.budget)
        if part == "models":
            model_rows(report, budget, sizes, device, args.tiny, args.models)
            flow_rows(report, budget, sizes, device)
            tiled_rows(report, budget, sizes, device, args.tiny)
            compile_rows(report, budget, sizes, device, args.tiny, args.compile)  # last: compiling takes minutes
        else:
            with tempfile.TemporaryDirectory(prefix="raywarp-gpu-check-") as work:
                pipeline_rows(report, budget, sizes, device, args.tiny, Path(work))
        reports[part] = report
        print((args.out / f"gpu_check_{part}.md").read_text(), flush=True)
    return reports


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
