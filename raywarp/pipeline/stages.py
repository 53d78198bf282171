"""The pipeline's stages: decode and encode, the worker, and the small steps between them.

    decode_unit      CPU task: one unit's span of its video → frames (uint8, upright)
    UnitWorker       actor, one pool for the run: holds the densifier and the denoiser on
                     its device (the GPU when it has one) and does a unit's two model
                     stages, `flows` and `sample`
    rclip.advance    CPU task: carries GP coordinates from one unit's first frame to the next's
    load_unit        CPU task: what a committed unit hands on (resume), its payloads verified
    replay_coords    CPU task: a shot's coordinate scan again from stored end maps (a unit redone late)
    encode_units     CPU task: a finished video's frames, from the payloads, to H.264

Plain functions and a plain class: the driver (`raywarp.pipeline.run`) runs them as
Ray tasks and actors wired by ObjectRefs, the benchmark's plain loop calls them in order.
They take and return the typed records of `raywarp.pipeline.records`. Arrays stay in Ray's
object store between stages; what is written to the manifest is what resume needs:
each unit's end map (`endmap/<id>`), its restored frames (`<id>`), and the commit row,
last, which records both payloads' checksums: every read of a committed payload checks
them, so a payload lost or damaged in storage is found (and its unit recomputed by the
driver) before it is used, and never reaches an output video. A stage never raises for
a bad unit: it returns (and for sampling commits) the error, so every unit keeps a
manifest row. Each committed row is also counted in the run's Ray metrics
(`raywarp.pipeline.telemetry`).
"""

from __future__ import annotations

import math
import socket
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np
import ray
import torch

from raywarp import flow as rflow
from raywarp.densify import shipped_model
from raywarp.pipeline import clip as rclip
from raywarp.pipeline import telemetry
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.decode import decode_span
from raywarp.pipeline.encode import encode_video as encode_frames
from raywarp.pipeline.manifest import Manifest, PayloadError
from raywarp.pipeline.records import Decoded, Flowed, ProgressRow, Redo, Unit, Video, unit_row, video_row
from raywarp.sampler import chain_coords
from raywarp.tensors import frames_to_tensor

EMPTY = np.zeros((0, 1, 1, 3), np.uint8)


def end_map_key(unit_id: str) -> str:
    return f"endmap/{unit_id}"


def error_text(stage: str, exc: BaseException) -> str:
    """'stage: Type: message' and the innermost frame, readable in `raywarp status`."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{stage}: {type(exc).__name__}: {exc}{at}"


def commit(manifest: Manifest, row: ProgressRow, name: str | None = None) -> None:
    """Commit `row` to the progress log (`name`: create-once, see `Manifest.append_progress`)
    and count it in the run's metrics."""
    manifest.append_progress([row], name=name)
    telemetry.record(row)


def decode_unit(unit: Unit, storage_options: dict | None) -> tuple[np.ndarray, Decoded]:
    """(frames [start, stop) of the unit's video, upright; what the decode reports)."""
    started, t0 = time.time(), time.perf_counter()
    try:
        pixels = decode_span(unit.uri, unit.start, unit.stop, storage_options, rotation=unit.rotation)
        error = ""
    except Exception as exc:  # noqa: BLE001 - recorded in the manifest, never lost
        pixels, error = EMPTY, error_text("decode", exc)
    return pixels, Decoded(started, time.perf_counter() - t0, error)


def load_unit(dst: str, storage_options: dict | None, unit_id: str, checksums: dict,
              with_frames: bool) -> tuple[str, np.ndarray, np.ndarray]:
    """(error, end map, frames) of a committed unit, each payload checked against the
    checksums its commit recorded; error names a payload that is gone or damaged ('' if none)."""
    manifest = Manifest(dst, storage_options)
    try:
        key = end_map_key(unit_id)
        end = manifest.get_arrays(key, checksums.get(key))["end_map"]
        frames = manifest.get_arrays(unit_id, checksums.get(unit_id))["frames"] if with_frames else EMPTY
    except PayloadError as exc:
        return str(exc), EMPTY, EMPTY
    return "", end, frames


def replay_coords(dst: str, storage_options: dict | None, end_maps: list[tuple[str, str | None]]) -> np.ndarray | None:
    """The GP coordinates of the first frame of the unit after the units of `end_maps`
    ((unit id, end map checksum) of a shot's first units, in order), carried through
    their stored end maps as the run's scan carried them; PayloadError if one is gone
    or damaged."""
    manifest, coords = Manifest(dst, storage_options), None
    for unit_id, expected in end_maps:
        coords = rclip.advance(coords, manifest.get_arrays(end_map_key(unit_id), expected)["end_map"])
    return coords


@dataclass
class Prepared:
    """What `flows` made of a unit that `sample` uses again: its measurement (with its
    baseline) and its coordinates chained from the pixel grid."""

    measurement: rclip.Measurement
    chain: torch.Tensor


class UnitWorker:
    """A unit's model stages on this actor's device; heavy state built once.

    `flows` stores the unit's end map and returns its flows (float32, on the model's
    grid) for `sample`, which restores the unit, stores its frames and commits it. What
    `flows` prepared stays here for `sample` (the driver sends a unit's sample to the
    actor that made its flows when that one is free; elsewhere it is made again).
    Used as a Ray actor by the pipeline and as a plain object by the benchmark's loop.
    """

    KEPT = 64  # units prepared and not yet sampled that an actor keeps (the driver's window is smaller)

    def __init__(self, config: dict, dst: str, storage_options: dict | None, attempt: int):
        # Imported here: diffusers takes seconds to import, and only the actors need it,
        # not the workers that run this module's light tasks.
        from raywarp.models import geometry, load_denoiser

        self.config = RunConfig.from_dict(config)
        threads = max(1, math.ceil(self.config.actor_cpus))  # the CPUs this actor holds
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        use_gpu = self.config.gpus_per_actor > 0 and torch.cuda.is_available()
        self.device = "cuda" if use_gpu else "cpu"
        self.geometry = geometry(self.config.model)
        self.denoiser = load_denoiser(self.config.model, device=self.device).enable_tiling(
            self.config.tile, self.config.tile_overlap, self.config.sampler.batch_size)
        if use_gpu:  # CPUs keep fp32: their bf16 kernels are slower, and CPU results stay exact
            self.denoiser.accelerate(self.config.precision, channels_last=True, compile=self.config.compile)
        if self.config.densify_method == "neuroexplicit":
            shipped_model(self.device)  # loaded once per actor, on its device
        self.manifest = Manifest(dst, storage_options)
        self.attempt = attempt
        self.prepared: OrderedDict[str, Prepared] = OrderedDict()

    def ready(self) -> str:
        return f"{socket.gethostname()}:{self.device}"

    def _measure(self, unit: Unit, pixels: np.ndarray) -> rclip.Measurement:
        return rclip.measure(pixels, self.config, unit.start, unit.video_frames, self.geometry)

    @ray.method(num_returns=3)
    def flows(self, unit: Unit, pixels: np.ndarray) -> tuple[Flowed, np.ndarray, np.ndarray]:
        """(what the flows report, flows (2, T−1, 2, h, w) float32 fwd/bwd, end map (2, h, w))."""
        t0 = time.perf_counter()
        try:
            m = self._measure(unit, pixels)
            with torch.no_grad():
                fwd, bwd = (f.cpu() for f in rclip.flows(m, self.config, self.device))
            unlinked = (~(rflow.linked(fwd) & rflow.linked(bwd))).nonzero().flatten().tolist()
            chain = chain_coords(bwd.double(), *m.grid, first_index=unit.shot_index)
            end = rclip.end_map(bwd, m.grid, chain)
            _, end_map_checksum = self.manifest.put_arrays(end_map_key(unit.id), end_map=end)
            self.prepared[unit.id] = Prepared(m, chain)
            while len(self.prepared) > self.KEPT:
                self.prepared.popitem(last=False)
            flows = torch.stack((fwd, bwd)).numpy()
            return Flowed(time.perf_counter() - t0, end_map_checksum, tuple(unit.start + i for i in unlinked)), flows, end
        except Exception as exc:  # noqa: BLE001
            return Flowed(time.perf_counter() - t0, error=error_text("flow", exc)), EMPTY, EMPTY

    @ray.method(num_returns=2)
    def sample(self, unit: Unit, pixels: np.ndarray, flows: np.ndarray, first_coords: np.ndarray | None,
               start_anchor: np.ndarray | None, end_anchor: np.ndarray | None, decoded: Decoded, flowed: Flowed,
               commit_as: str) -> tuple[ProgressRow, np.ndarray]:
        """Restore the unit; payload first, commit row last. Returns (the row, its frames).

        start_anchor / end_anchor: the neighbouring seams' frames (T, H, W, 3); the clip's
        first frame is the previous seam's last, its last frame the next seam's first.
        decoded, flowed: what the unit's earlier stages reported. commit_as: the commit's
        name, one per dispatch, so a retry of this call after a crash does not commit the
        unit twice.
        """
        t0 = t_sampled = time.perf_counter()
        error, output, metrics, frames, checksums = "", "", {}, EMPTY, {}
        try:
            prepared = self.prepared.pop(unit.id, None)
            m = prepared.measurement if prepared is not None else self._measure(unit, pixels)
            fwd, bwd = torch.tensor(flows)  # a copy: the object store's is read-only
            restored = rclip.restore(
                self.denoiser, m, fwd, bwd, self.config, unit.seed, unit.shot_index, first_coords,
                start_anchor[-1] if start_anchor is not None else None,
                end_anchor[0] if end_anchor is not None else None, device=self.device,
                chain=prepared.chain if prepared is not None else None,
            )
            t_sampled = time.perf_counter()
            frames = restored[unit.out_start - unit.start : unit.out_stop - unit.start]
            output, checksums[unit.id] = self.manifest.put_arrays(unit.id, frames=frames)
            checksums[end_map_key(unit.id)] = flowed.end_map_checksum
            metrics = {"measurement_error": m.op.measurement_error(frames_to_tensor(restored), m.y),
                       "fallback_pairs": list(flowed.fallback_pairs)}
        except Exception as exc:  # noqa: BLE001
            error = error_text("sample", exc)
        row = unit_row(unit, self.attempt, "failed" if error else "done", started_at=decoded.started_at,
                       **({} if error else {"frames": unit.frames}), seconds_decode=decoded.seconds,
                       seconds_flow=flowed.seconds, seconds_sample=t_sampled - t0,
                       seconds_write=time.perf_counter() - t_sampled if output else 0.0, metrics=metrics, error=error,
                       output=output, checksums=checksums)
        commit(self.manifest, row, name=commit_as)  # the commit record, after the payload
        return row, frames if unit.kind == "seam" else EMPTY  # a seam's frames anchor its clips


def encode_units(video: Video, units: list[tuple[str, str | None]], dst: str, storage_options: dict | None,
                 attempt: int) -> ProgressRow | Redo:
    """Assemble the video from its units' payloads (`units`: (id, frames checksum) in
    output order) and encode it to `video.output`; commits the video's row. Streams
    unit by unit: a film's frames never sit in memory at once.

    A payload that is gone or damaged stops the encode before anything is written to the
    output, and commits nothing: the `Redo` tells the driver which unit to recompute."""
    manifest = Manifest(dst, storage_options)
    started = time.time()
    reading = {}

    def frames():
        for uid, expected in units:
            reading["unit"] = uid
            yield from manifest.get_arrays(uid, expected)["frames"]

    try:
        encoded = encode_frames(frames(), video.output, Fraction(video.fps_num, video.fps_den), storage_options,
                                audio_source=video.uri if video.has_audio else None)
        if encoded.frames != video.frames:
            raise RuntimeError(f"assembled {encoded.frames} frames, the source has {video.frames}")
        outcome = {"status": "done", "frames": encoded.frames, "output": video.output, "error": "",
                   "checksums": {video.output: encoded.sha256}, "output_bytes": encoded.bytes}
    except PayloadError as exc:
        return Redo(reading["unit"], str(exc))
    except Exception as exc:  # noqa: BLE001
        outcome = {"status": "failed", "output": "", "error": error_text("encode", exc)}
    row = video_row(video.video_id, video.uri, attempt, started_at=started, seconds_write=time.time() - started,
                    **outcome)
    commit(manifest, row)
    return row
