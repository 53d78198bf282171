"""`raywarp run | status | report | demo`: the command line, and the one place flags become a RunConfig.

    raywarp run SRC --out DST --task sr|inpaint|denoise [--scale 4] [--kernel bicubic|area] [--mask SPEC]
                [--model NAME|PATH] [--strength S] [--seed N] [--reestimate-flow-at F] [--[no-]propagate]
                [--mode MODE] [--guidance-method x0|gradient] [--clip-len 16] [--overlap 4]
                [--steps N] [--guidance λ] [--flow-from baseline|input] [--flow-method dis|farneback]
                [--densify-method neuroexplicit|eed|laplace]
                [--shot-threshold 27] [--tile N] [--tile-overlap M] [--[no-]inpaint-crop]
                [--precision fp32|bf16|fp16] [--compile]
                [--address auto|URL] [--gpus-per-actor F] [--actor-cpus F] [--decode-cpus F] [--min-actors N]
                [--max-actors N]
    raywarp status DST [--json] [--watch [SECONDS]]
    raywarp report DST [--out FILE.html]
    raywarp demo [--out DIR]

S3 (and S3-compatible stores): credentials come from the environment or a file only,
never from the command line, where any local user could read them (`ps`): the AWS
variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), or the AWS
credentials file (~/.aws/credentials, AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE), or the
instance's role. Ray workers read them from their own environment: they never travel
as task arguments and are never written to the manifest. The endpoint comes from
--s3-endpoint or AWS_ENDPOINT_URL. Exit status: 0 when every video is done, 1 when
some failed, 2 for a refused command, 130 / 143 when stopped by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from raywarp import flow as rflow
from raywarp.densify import METHODS as DENSIFY_METHODS
from raywarp.pipeline.config import RunConfig
from raywarp.sampler import GUIDANCE_METHODS, MODES, SamplerConfig
from raywarp.tensors import PRECISIONS

DEFAULT_MODE = {"gp": "warped", "white": "white-warped"}  # by the noise the model was trained on
REESTIMATE_FLOW_AT = {"inpaint": 0.5}  # by task; measured: docs/sampling.md#re-estimation


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The options of `raywarp run`, shared with `jobs/restore.py`."""
    defaults, sampler = RunConfig(), SamplerConfig()
    p.add_argument("src", help="a video file, a directory, a glob, a list file of URIs, or s3://bucket/prefix")
    p.add_argument("--out", required=True, help="output directory or s3:// prefix (the manifest goes under _raywarp/)")
    p.add_argument("--task", choices=("sr", "inpaint", "denoise"), default=defaults.task)
    p.add_argument("--scale", type=int, default=defaults.scale, help="super-resolution factor")
    p.add_argument("--kernel", choices=("bicubic", "area"), default=defaults.kernel, help="SR degradation the input went through")
    p.add_argument("--mask", help="inpainting hole: rect:x0,y0,x1,y1 | circle:cx,cy,r | file:PATH | dir:PATH (see raywarp.inverse.parse_mask)")
    p.add_argument("--model", default=defaults.model, help="'default' (the shipped prior) or a local diffusers folder")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="default: the model's own, from its raywarp_noise.json: warped (GP noise, self-guidance) for "
                        "GP-noise models such as the shipped prior, white-warped for white-noise models (any folder "
                        "without that file, e.g. public Stable Diffusion checkpoints)")
    p.add_argument("--guidance-method", choices=GUIDANCE_METHODS, default=sampler.guidance_method,
                   help="self-guidance on the prediction x̂0 (no backward pass) or through the denoiser's gradient (the paper's)")
    p.add_argument("--clip-len", type=int, default=defaults.clip_len)
    p.add_argument("--overlap", type=int, default=defaults.overlap)
    p.add_argument("--steps", type=int, default=sampler.steps)
    p.add_argument("--guidance", type=float, default=sampler.guidance, help="self-guidance strength λ")
    p.add_argument("--strength", type=float, default=sampler.strength, help="1: sample from noise; < 1: refine the baseline")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--flow-from", choices=("baseline", "input"), default=defaults.flow_from,
                   help="SR: estimate motion on the bicubic baseline or on the low-resolution input")
    p.add_argument("--reestimate-flow-at", type=float, default=None,
                   help="re-estimate self-guidance's flows on the sampler's own prediction after this fraction of the "
                        f"steps (0: never); default {REESTIMATE_FLOW_AT['inpaint']} for inpainting, 0 otherwise "
                        "(measured: docs/sampling.md)")
    p.add_argument("--propagate", action=argparse.BooleanOptionalAction, default=sampler.propagate,
                   help="inpainting, in the modes that follow the flow: copy hole pixels that the flow traces to a "
                        "pixel another frame of the clip saw, and generate only the rest")
    p.add_argument("--flow-method", choices=rflow.METHODS, default=defaults.flow_method,
                   help="optical flow estimator (frames too small for DIS, under 12 px on the model's grid, get no flow)")
    p.add_argument("--densify-method", choices=DENSIFY_METHODS, default=defaults.densify_method,
                   help="how flow is filled where it cannot be trusted: the shipped neuroexplicit densifier, edge-enhancing "
                        "diffusion, or homogeneous (Laplace) diffusion")
    p.add_argument("--shot-threshold", type=float, default=defaults.shot_threshold,
                   help="cut detection: mean HSV change between frames that starts a new shot (PySceneDetect's "
                        "ContentDetector); 0: no detection, every video is one shot")
    p.add_argument("--tile", type=int, default=None,
                   help="tiled denoising: tiles of at most N×N output pixels (0: whole frames); default: the model's "
                        "(latent models: their native size; the shipped prior: docs/tiling.md)")
    p.add_argument("--tile-overlap", type=int, default=None,
                   help="output pixels neighbouring tiles share, blended (default: 1/8 of the tile)")
    p.add_argument("--inpaint-crop", action=argparse.BooleanOptionalAction, default=defaults.inpaint_crop,
                   help="inpainting: restore the holes in a crop around them at the model's native size, the rest of "
                        "the frame as observed (--no-inpaint-crop: sample whole frames)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default=defaults.precision,
                   help="the denoiser's arithmetic on a GPU (its weights cast to it); CPUs always run fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser on GPU actors (compiles on first use)")
    p.add_argument("--address", help="Ray cluster address ('auto' or ray://…); default: start an embedded local Ray")
    p.add_argument("--gpus-per-actor", type=float, default=defaults.gpus_per_actor, help="fractions allowed")
    p.add_argument("--actor-cpus", type=float, default=defaults.actor_cpus, help="logical CPUs (and threads) per worker actor")
    p.add_argument("--decode-cpus", type=float, default=defaults.decode_cpus,
                   help="logical CPUs per light task (probe, shot scan, decode, encode); fractions let them run beside the actors")
    p.add_argument("--min-actors", type=int, default=defaults.min_actors)
    p.add_argument("--max-actors", type=int, default=defaults.max_actors)
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own log output and progress (by default they stay in Ray's session log folder, "
                        "/tmp/ray/session_latest/logs for an embedded Ray)")
    add_s3_args(p)


def add_s3_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint", default=os.environ.get("AWS_ENDPOINT_URL"),
                   help="S3-compatible endpoint URL (credentials: from the environment or the AWS credentials file "
                        "only, never from the command line; see `raywarp run --help`)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's config; the sampling mode and GP length scale default to the model's noise spec."""
    from raywarp.models import noise_spec  # lazy: diffusers takes seconds to import

    spec = noise_spec(args.model)
    sampler = SamplerConfig(mode=args.mode or DEFAULT_MODE[spec["noise"]], guidance_method=args.guidance_method,
                            steps=args.steps, guidance=args.guidance, strength=args.strength,
                            length_scale=spec.get("length_scale", SamplerConfig.length_scale),
                            num_features=spec.get("num_features", SamplerConfig.num_features),
                            reestimate_flow_at=(args.reestimate_flow_at if args.reestimate_flow_at is not None
                                                else REESTIMATE_FLOW_AT.get(args.task, 0.0)),
                            propagate=args.propagate)
    return RunConfig(task=args.task, scale=args.scale, kernel=args.kernel, mask=args.mask, model=args.model,
                     sampler=sampler, clip_len=args.clip_len, overlap=args.overlap, seed=args.seed, flow_from=args.flow_from,
                     flow_method=args.flow_method, densify_method=args.densify_method, shot_threshold=args.shot_threshold,
                     precision=args.precision, tile=args.tile, tile_overlap=args.tile_overlap,
                     inpaint_crop=args.inpaint_crop, compile=args.compile, gpus_per_actor=args.gpus_per_actor,
                     actor_cpus=args.actor_cpus, decode_cpus=args.decode_cpus, min_actors=args.min_actors,
                     max_actors=args.max_actors)


def storage_options_from_args(args: argparse.Namespace) -> dict | None:
    """fsspec options for s3:// URIs; None when nothing is set (s3fs then reads the environment)."""
    opts = {}
    if args.s3_endpoint:
        opts["client_kwargs"] = {"endpoint_url": args.s3_endpoint}
    return opts or None


def run_command(args: argparse.Namespace) -> int:
    from raywarp.models import ModelNotFoundError, load_denoiser
    from raywarp.pipeline.manifest import ConfigMismatchError
    from raywarp.pipeline.lease import LeaseHeldError, LeaseLostError
    from raywarp.pipeline.run import WorkerStartError, run

    _received.clear()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        config = config_from_args(args)
        # Fail fast on a bad model or a tile it cannot take, before any cluster work.
        load_denoiser(config.model).enable_tiling(config.tile, config.tile_overlap)
        summary = run(args.src, args.out, config, storage_options_from_args(args), address=args.address,
                      verbose=args.verbose)
    except (ValueError, FileNotFoundError, ModelNotFoundError, ConfigMismatchError, WorkerStartError, LeaseHeldError,
            LeaseLostError) as exc:
        print(f"raywarp run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signum = _received.get("signal", signal.SIGINT)
        print(f"raywarp run: {'terminated' if signum == signal.SIGTERM else 'interrupted'}; every committed unit is "
              f"kept: run the same command again to resume (progress: raywarp status {args.out})", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary.format())
    return 0 if summary.ok else 1


_received: dict = {}  # the signal that stopped a run


def _terminate(signum, frame):
    """SIGTERM (a scheduler, `kill`) stops a run as Ctrl-C does, its work in flight
    abandoned and its Ray shut down: a KeyboardInterrupt is what passes through Ray's
    calls (it re-raises its own), so the signal is noted beside it."""
    _received["signal"] = signal.SIGTERM
    raise KeyboardInterrupt


STATUS_DESCRIPTION = """\
The progress of a run, from its manifest alone (safe while the run is in flight).

--json prints one JSON object (with --watch, one per line), with these keys:
  root                 the manifest folder, DST/_raywarp
  attempt              how many times the run was started
  clips_done, clips_failed, clips_pending
                       units (seams and clips) by their latest row; pending: no row yet
  videos_done, videos_failed, videos_pending
                       videos likewise
  frames_done          frames of the done units
  frames_pending       frames of the pending units
  fps                  frames per second of this attempt's done units (null: unknown)
  eta_seconds          frames_pending / fps (null: unknown; 0: nothing pending)
  last_errors          up to 5 current failures, newest first: [{"id", "uri", "error"}]

--watch reprints the status every SECONDS until no unit or video is pending, then
exits 0 if nothing failed and 1 otherwise; Ctrl-C exits 130. Without --watch: 0.
"""


def add_status_args(p: argparse.ArgumentParser) -> None:
    # DST first in the usage: `--watch DST` would read DST as the seconds.
    p.usage = "%(prog)s DST [--json] [--watch [SECONDS]] [--s3-endpoint URL]"
    p.add_argument("dst", metavar="DST", help="the run's --out: a directory or s3:// prefix")
    p.add_argument("--json", action="store_true", help="the status as JSON (keys above)")
    p.add_argument("--watch", nargs="?", const=5.0, type=_seconds, metavar="SECONDS",
                   help="reprint every SECONDS (default 5) until the run is finished")
    add_s3_args(p)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (DST goes before --watch)") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"needs a positive number of seconds, got {text}")
    return seconds


def status_command(args: argparse.Namespace) -> int:
    from raywarp.pipeline.manifest import Manifest, format_status

    manifest = Manifest(args.dst, storage_options_from_args(args))
    if manifest.run_info() is None:
        print(f"raywarp status: no raywarp run under {args.dst}", file=sys.stderr)
        return 2
    show = (lambda status: json.dumps(status, sort_keys=True)) if args.json else format_status
    if args.watch is None:
        try:
            print(show(manifest.status()))
        except ValueError as exc:  # a manifest this version cannot read
            print(f"raywarp status: error: {exc}", file=sys.stderr)
            return 2
        return 0
    # Ctrl-C sets a flag, checked between reads: a KeyboardInterrupt raised inside a
    # Parquet read (pyarrow's C++, its threads) could abort the process instead (seen: SIGABRT).
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        while not interrupted.is_set():
            status = manifest.status()
            if interrupted.is_set():
                break
            print(show(status), end="\n" if args.json else "\n\n", flush=True)
            if _finished(status):
                return 1 if status["clips_failed"] or status["videos_failed"] else 0
            interrupted.wait(args.watch)
    finally:
        signal.signal(signal.SIGINT, previous)
    print("raywarp status: interrupted", file=sys.stderr)
    return 130


def _finished(status: dict) -> bool:
    """Nothing pending, once the run has planned its videos (before, nothing is pending yet either)."""
    planned = status["videos_done"] + status["videos_failed"] + status["videos_pending"]
    return planned > 0 and not status["clips_pending"] and not status["videos_pending"]


def report_command(args: argparse.Namespace) -> int:
    from raywarp.report import NoRunError, write_report

    try:
        print(write_report(args.dst, args.out, storage_options_from_args(args)))
    except NoRunError as exc:
        print(f"raywarp report: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the demo owns its options
        from raywarp import demo

        return demo.main(argv[1:])
    parser = argparse.ArgumentParser(prog="raywarp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_args(sub.add_parser("run", help="restore videos (resumable)", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter))
    add_status_args(sub.add_parser("status", help="progress of a run, from its manifest alone",
                                   description=STATUS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter))
    report = sub.add_parser("report", help="an HTML page of a run: frames, x-t slices, temporal consistency, times, failures")
    report.add_argument("dst")
    report.add_argument("--out", help="where to write it (a local path or URI); default DST/_raywarp/report.html")
    add_s3_args(report)
    sub.add_parser("demo", help="sample videos with known motion through the whole pipeline (raywarp demo --help)")
    args = parser.parse_args(argv)
    return {"run": run_command, "status": status_command, "report": report_command}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
