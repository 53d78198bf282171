"""The driver: probe → plan → Ray Data passes (flows; seams; clips) → encode → summary.

    pass 0  decode → EstimateFlows: every unit's flows and end map, stored
    scan    per video, the GP coordinates of each unit's first frame (cheap; driver)
    pass 1  decode → SampleUnits for the seams
    pass 2  decode → SampleUnits for the clips, anchored to the seams
    encode  one task per video, from the units' payloads in order

Everything the driver decides is written to the manifest before work starts (videos,
plan), and everything a worker finishes is committed by the worker itself, so killing
the driver at any point loses at most the units in flight; running the same command
again skips every committed unit and video (`Manifest.committed`).
"""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass, field
from fractions import Fraction

import pyarrow.fs as pafs
import ray
from ray.data.expressions import col

from raywarp.pipeline import clip as rclip
from raywarp.pipeline import plan as rplan
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.encode import encode_video
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.source import VideoError, filesystem, list_videos, probe
from raywarp.pipeline.stages import EstimateFlows, SampleUnits, coords_key, decode_unit, flows_key


@dataclass
class RunSummary:
    dst: str
    videos_done: list[str] = field(default_factory=list)
    videos_failed: dict[str, str] = field(default_factory=dict)  # uri → reason
    units_computed: int = 0
    units_skipped: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.videos_failed

    def format(self) -> str:
        lines = [f"{len(self.videos_done)} videos done, {len(self.videos_failed)} failed; "
                 f"{self.units_computed} units computed, {self.units_skipped} already committed; "
                 f"{self.seconds:.1f} s; outputs in {self.dst}"]
        lines += [f"  FAILED {uri}: {reason}" for uri, reason in self.videos_failed.items()]
        return "\n".join(lines)


def output_uri(dst: str, uri: str, taken: set[str]) -> str:
    """DST/<source name>.mp4, disambiguated by a suffix when two sources share a name."""
    stem = posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0] or "video"
    name = stem
    while name in taken:
        name = f"{stem}-{len(taken)}"
    taken.add(name)
    return f"{dst.rstrip('/')}/{name}.mp4"


@ray.remote
def _probe(uri: str, storage_options: dict | None) -> dict:
    try:
        return probe(uri, storage_options)
    except VideoError as exc:
        return {"uri": uri, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - an unreadable key must not sink the job
        return {"uri": uri, "error": f"{uri}: cannot read: {type(exc).__name__}: {exc}"}


@ray.remote
def _encode(video: dict, units: list[dict], dst_video: str, dst: str, storage_options: dict | None, attempt: int) -> dict:
    """Assemble the video from its units' payloads, in order, and encode it."""
    manifest = Manifest(dst, storage_options)
    started = time.time()
    row = {"id": video["video_id"], "video_id": video["video_id"], "uri": video["uri"], "kind": "video",
           "attempt": attempt, "node": os.uname().nodename, "started_at": started}
    try:
        ordered = sorted(units, key=lambda u: u["out_start"])

        def frames():
            for u in ordered:
                yield from manifest.get_arrays(u["id"])["frames"]

        count = encode_video(frames(), dst_video, Fraction(int(video["fps_num"]), int(video["fps_den"])),
                             storage_options, audio_source=video["uri"] if video.get("has_audio") else None)
        if count != int(video["frames"]):
            raise RuntimeError(f"assembled {count} frames, the source has {video['frames']}")
        row.update(status="done", frames=count, output=dst_video, error="")
    except Exception as exc:  # noqa: BLE001
        row.update(status="failed", frames=0, output="", error=f"encode: {type(exc).__name__}: {exc}")
    row["finished_at"] = time.time()
    row["seconds_write"] = row["finished_at"] - started
    manifest.append_progress([row])
    return row


def _pyarrow_fs(uri: str, storage_options: dict | None):
    fs, path = filesystem(uri, storage_options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _run_pass(phase: int, pending: set[str], manifest: Manifest, config: RunConfig, storage_options, attempt) -> list[dict]:
    """One streaming Ray Data pass over the pending units: phase 0 computes flows (all
    units), phases 1 and 2 sample the seams and the clips."""
    if not pending:
        return []
    fs, path = _pyarrow_fs(manifest.table_path("clips"), storage_options)
    pool = ray.data.ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors)
    stage, cpus = (EstimateFlows, config.flow_cpus) if phase == 0 else (SampleUnits, config.sample_cpus)
    ds = (
        ray.data.read_parquet(path, filesystem=fs)
        .filter(expr=col("id").is_in(sorted(pending)))  # an expression: pushed into the read
        .repartition(len(pending))  # one block per unit, so every actor of the pool gets work
        .map_batches(decode_unit, batch_size=1, num_cpus=config.decode_cpus, fn_kwargs={"storage_options": storage_options})
        .map_batches(stage, batch_size=1, compute=pool, num_cpus=cpus, num_gpus=config.gpus_per_actor,
                     fn_constructor_kwargs={"config": config.to_dict(), "dst": manifest.dst,
                                            "storage_options": storage_options, "attempt": attempt})
    )
    return list(ds.iter_rows())


def scan_coords(manifest: Manifest, units: list[dict]) -> None:
    """Store the GP coordinates of every unit's first frame (payload `coords/<id>`), per
    video, as far as its units' end maps exist (a unit whose flow failed ends the scan)."""
    by_video: dict[str, list[dict]] = {}
    for u in units:
        by_video.setdefault(u["video_id"], []).append(u)
    for video_units in by_video.values():
        ordered = sorted(video_units, key=lambda u: (u["start"], u["phase"]))
        maps = []
        for u in ordered:
            if not manifest.has_arrays(flows_key(u["id"])):
                break
            maps.append(manifest.get_arrays(flows_key(u["id"]))["end_map"])
        if maps:
            for u, coords in zip(ordered, rclip.start_coords(maps)):
                manifest.put_arrays(coords_key(u["id"]), start=coords)


def run(src: str, dst: str, config: RunConfig, storage_options: dict | None = None, address: str | None = None,
        log=print) -> RunSummary:
    """Restore every video under `src` into `dst`; resumable. See the module docstring."""
    started = time.perf_counter()
    manifest = Manifest(dst, storage_options)
    attempt = manifest.start_run(config.to_dict(), config.hash())  # refuses a different config
    embedded = not ray.is_initialized()
    if embedded:
        ray.init(address=address, log_to_driver=False, include_dashboard=False) if address else ray.init(log_to_driver=False)
    try:
        summary = _run(src, dst, config, storage_options, manifest, attempt, log)
    finally:
        if embedded:
            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary


def _run(src, dst, config, storage_options, manifest: Manifest, attempt: int, log) -> RunSummary:
    summary = RunSummary(dst)
    uris = list_videos(src, storage_options)
    probed = ray.get([_probe.remote(u, storage_options) for u in uris])
    config_hash = config.hash()
    videos, bad = [], []
    for p in probed:
        if "error" in p:
            bad.append(p)
        else:
            p["video_id"] = rplan.video_id(p["uri"], p["fingerprint"], config_hash)
            videos.append(p)
    taken: set[str] = set()
    for v in videos:
        v["output"] = output_uri(dst, v["uri"], taken)
    units = rplan.plan(videos, config)
    manifest.write_table("videos", videos)
    manifest.write_table("clips", units)
    for p in bad:  # a video that cannot be probed gets its row now; the others go on
        vid = rplan.video_id(p["uri"], "unreadable", config_hash)
        manifest.append_progress([{"id": vid, "video_id": vid, "uri": p["uri"], "kind": "video", "status": "failed",
                                   "attempt": attempt, "error": p["error"], "started_at": time.time(),
                                   "finished_at": time.time(), "frames": 0}])
        summary.videos_failed[p["uri"]] = p["error"]
    log(f"{len(videos)} videos, {len(units)} units planned ({len(bad)} unreadable); manifest in {manifest.root}")

    done = manifest.committed()
    todo = [u for u in units if u["id"] not in done]
    summary.units_skipped = len(units) - len(todo)
    need_flows = {u["id"] for u in todo if not manifest.has_arrays(flows_key(u["id"]))}
    log(f"pass 0: flows for {len(need_flows)} units")
    _run_pass(0, need_flows, manifest, config, storage_options, attempt)
    videos_todo = {u["video_id"] for u in todo}
    scan_coords(manifest, [u for u in units if u["video_id"] in videos_todo])
    for phase, name in ((1, "seams"), (2, "clips")):
        pending = {u["id"] for u in todo if u["phase"] == phase}
        log(f"pass {phase}: {len(pending)} {name} to sample")
        summary.units_computed += len(_run_pass(phase, pending, manifest, config, storage_options, attempt))

    latest = manifest.latest()
    encodes = []
    for v in videos:
        mine = [u for u in units if u["video_id"] == v["video_id"]]
        failed = [latest.get(u["id"], {}) for u in mine if latest.get(u["id"], {}).get("status") != "done"]
        if v["video_id"] in done:
            summary.videos_done.append(v["uri"])
        elif failed:
            reason = f"{len(failed)} of {len(mine)} units failed; first: {failed[0].get('error') or 'no result'}"
            manifest.append_progress([{"id": v["video_id"], "video_id": v["video_id"], "uri": v["uri"], "kind": "video",
                                       "status": "failed", "attempt": attempt, "error": reason, "frames": 0,
                                       "started_at": time.time(), "finished_at": time.time()}])
            summary.videos_failed[v["uri"]] = reason
        else:
            encodes.append(_encode.remote(v, mine, v["output"], dst, storage_options, attempt))
    for row in ray.get(encodes):
        if row["status"] == "done":
            summary.videos_done.append(row["uri"])
        else:
            summary.videos_failed[row["uri"]] = row["error"]
    return summary
