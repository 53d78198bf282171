"""The driver: probe → shots → plan → stream every unit through decode → flows → sample → encode.

One streaming run on Ray Core. Every unit of every video goes through the same stages,
and starts each as soon as its own inputs exist:

    decode(u)     CPU task                         when u enters the window
    flows(u)      worker actor   ← decode(u)
    coords(u)     advance_coords ← coords and end map of the unit before u in its shot
    sample(u)     worker actor   ← decode(u), flows(u), coords(u); a clip also ← its seams
    encode(v)     CPU task       ← every unit of video v committed

There is no barrier across videos or stages: one pool of worker actors serves the whole
run, each loading its models once; finished videos are encoded while others are still
being flowed and sampled; a long video spreads over every actor because its seams, and
then its clips, are independent of each other. Why Ray Core and not Ray Data: a unit
depends on its neighbours (noise coordinates run along the video, clips wait for their
seams), which a row-wise dataset cannot express; ObjectRefs can, and arrays stay in the
object store between stages. The loop below only decides *when* a task is submitted,
so that an actor never waits inside a call: it hands the next task (flows first, then
samples, each in run order) to the next idle actor once its inputs are ready, and keeps
at most `window` units open so memory stays bounded on a film of any length.

Everything the driver decides is written to the manifest before work starts (videos,
plan); every unit is committed by its worker (payload first, row last), so killing the
driver loses at most the units in flight, and running the same command again skips
every committed unit and video. A failure never stops the run: the unit gets a failed
row, and so does every unit that needed it (later units of its shot need its end map
for their noise coordinates; clips need their seams).

Before planning, every video is scanned for its shots (`raywarp.pipeline.shots`), in
spans spread over the cluster like the decode tasks; the shots are written to the
manifest, and a resumed run reads them back instead of scanning again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import posixpath
import re
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import ray

from raywarp.pipeline import clip as rclip
from raywarp.pipeline import plan as rplan
from raywarp.pipeline import shots as rshots
from raywarp.pipeline import stages
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.lease import Lease
from raywarp.pipeline.manifest import COMPACT_EVERY, Manifest, commit_name
from raywarp.pipeline.progress import Progress
from raywarp.pipeline.source import Listing, VideoError, filesystem, list_videos, probe
from raywarp.pipeline.records import Decoded, Flowed, ProgressRow, Redo, Unit, Unusable, Video, unit_row, video_row
from raywarp.pipeline.stages import UnitWorker, commit, end_map_key, error_text

decode_unit = ray.remote(num_returns=2)(stages.decode_unit)
advance_coords = ray.remote(rclip.advance)
load_unit = ray.remote(num_returns=3)(stages.load_unit)
replay_coords = ray.remote(stages.replay_coords)
encode_units = ray.remote(stages.encode_units)
TICK_SECONDS = 5.0  # the driver's wait between progress updates when nothing finishes
ACTOR_WAIT_SECONDS = 60.0  # no worker actor started by then: say what the run is waiting for
MAX_FAILED_STARTS = 3  # worker actors that died starting, none having started: the run stops
SKIPPED_SHOWN = 5  # files not taken that the run names in its output (the manifest holds them all)
SKIPPED_SCHEMA = pa.schema([("uri", pa.string()), ("reason", pa.string())])
MAX_UNIT_RETRIES = 2  # a unit whose task is lost with its worker or node is started over this often
CLOSE_WAIT_SECONDS = 30.0  # the longest the end of a run waits for actors still starting before it kills them


class WorkerStartError(RuntimeError):
    """The worker actors cannot start (a model that loads on the driver but not on the
    workers, a GPU that fails): no unit can run, so the run stops; nothing committed is lost."""


@dataclass
class RunSummary:
    dst: str
    videos_done: list[str] = field(default_factory=list)
    videos_failed: dict[str, str] = field(default_factory=dict)  # uri → reason
    units_computed: int = 0
    units_skipped: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # files under SRC not taken as videos → why
    seconds: float = 0.0
    ray_logs: str = ""  # where Ray's own output went (the embedded cluster's session logs)

    @property
    def ok(self) -> bool:
        return not self.videos_failed

    def format(self) -> str:
        lines = [f"{len(self.videos_done)} videos done, {len(self.videos_failed)} failed; "
                 f"{self.units_computed} units computed, {self.units_skipped} already committed; "
                 f"{self.seconds:.1f} s; outputs in {self.dst}"]
        if self.skipped:
            lines.append(f"{len(self.skipped)} files under the source not taken (not videos; listed in "
                         f"{self.dst}/_raywarp/skipped.parquet)")
        lines += [f"  FAILED {uri}: {reason}" for uri, reason in self.videos_failed.items()]
        if self.ray_logs:
            lines.append(f"Ray's logs: {self.ray_logs}")
        return "\n".join(lines)


def _path_of(uri: str) -> str:
    return uri.split("://", 1)[-1]


def output_uris(dst: str, uris: list[str]) -> dict[str, str]:
    """{source URI: output URI}: the sources' folders mirrored under `dst`, each as
    <relative path without extension>.mp4 (a/clip.mov → DST/a/clip.mp4).

    Sources that would still share an output (a/clip.mov and a/clip.mkv) are told apart
    by a digest of their URI (DST/a/clip-1f3a9c2e.mp4). A function of the URI set alone:
    the same whatever the listing order, and unique. Always inside DST, beside the
    manifest: no `..`, no absolute path, no control character survives in a name.
    """
    paths = [posixpath.normpath(_path_of(u)) for u in uris]
    try:
        root = posixpath.commonpath([posixpath.dirname(p) for p in paths]) if paths else ""
    except ValueError:  # local and remote sources mixed: keep their whole paths
        root = ""
    stems = {u: _safe_name(posixpath.splitext(posixpath.relpath(p, root) if root else p)[0])
             for u, p in zip(uris, paths)}
    count: dict[str, int] = {}
    for stem in stems.values():
        count[stem] = count.get(stem, 0) + 1
    dst = dst.rstrip("/")
    out = {}
    for u, stem in stems.items():
        if count[stem] > 1:
            stem = f"{stem}-{hashlib.sha256(u.encode()).hexdigest()[:8]}"
        out[u] = f"{dst}/{stem}.mp4"
    return out


def _safe_name(stem: str) -> str:
    """`stem` as a relative path that stays inside DST and out of its manifest folder."""
    parts = [re.sub(r"[\x00-\x1f\x7f]", "_", p) for p in stem.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if parts and parts[0] == "_raywarp":
        parts[0] = "_raywarp-source"
    return "/".join(parts) or "video"


def _or_unusable(uri: str, fn, *args):
    """`fn(*args)`, or `Unusable` naming why the video cannot be used."""
    try:
        return fn(*args)
    except VideoError as exc:
        return Unusable(uri, str(exc))
    except Exception as exc:  # noqa: BLE001 - an unreadable key must not sink the job
        return Unusable(uri, f"{uri}: cannot read: {type(exc).__name__}: {exc}")


@ray.remote
def _probe(uri: str, storage_options: dict | None) -> Video | Unusable:
    return _or_unusable(uri, probe, uri, storage_options)


@ray.remote
def _scan(uri: str, start: int, stop: int, threshold: float, storage_options: dict | None) -> rshots.ScannedSpan | Unusable:
    return _or_unusable(uri, rshots.scan_span, uri, start, stop, threshold, storage_options)


def _resources(resources: dict) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


@dataclass(frozen=True)
class _Lost:
    """A task lost with its worker or node (a process killed, an actor gone)."""

    error: str


@dataclass
class _Unit:
    """A unit's place in the stream: the refs of what exists of it and is still needed
    (each is dropped once no later task needs it, so the object store holds the open
    units' data, not the run's)."""

    plan: Unit
    index: int  # its place in its shot's chain
    state: str = "waiting"  # waiting → decoding → decoded → flowing → flowed → sampling → done | failed
    checksums: dict = field(default_factory=dict)  # of its committed payloads, from its commit row
    decoded: Decoded | None = None  # what its decode reported
    flowed: Flowed | None = None  # what its flows reported
    loading: bool = False  # committed earlier: its payloads are being read back and verified
    error: str = ""  # why it failed
    retries: int = 0  # times it was started over after its task was lost
    pixels: ray.ObjectRef | None = None
    flows: ray.ObjectRef | None = None
    end_map: ray.ObjectRef | None = None
    coords: ray.ObjectRef | None = None  # its first frame's GP coordinates (None: identity)
    has_coords: bool = False
    frames: ray.ObjectRef | None = None  # a seam's frames, anchors of its clips
    flowed_on: object = None  # the actor that made its flows (and keeps what they prepared)


class _Pool:
    """The run's worker actors: the first `min_actors` start before the videos are even
    probed (loading models overlaps probing and planning); `grow` adds one at a time."""

    def __init__(self, config: RunConfig, dst: str, storage_options, attempt: int):
        self.worker = ray.remote(UnitWorker).options(
            num_cpus=config.actor_cpus, num_gpus=config.gpus_per_actor, max_restarts=3, max_task_retries=1)
        self.args = (config.to_dict(), dst, storage_options, attempt)
        self.actors, self.idle = [], []
        self.starting: dict[ray.ObjectRef, object] = {}  # ready() ref → actor
        self.started_any, self.failed_starts = False, 0
        for _ in range(config.min_actors):
            self.grow()

    def grow(self) -> None:
        actor = self.worker.remote(*self.args)
        self.actors.append(actor)
        self.starting[actor.ready.remote()] = actor

    def close(self) -> None:
        """Free the actors' resources now. Dropping the handles is not enough: a run that
        raised keeps them alive in its traceback, and on a shared cluster (or a caller's
        own Ray) the next run would wait forever for the CPUs or GPUs they hold.

        Actors still starting are given up to CLOSE_WAIT_SECONDS to finish first: one
        killed while Ray creates it can leave its worker holding its CPUs for good (seen
        here after a run with nothing left to do; ray-project/ray#27743). One that never
        got resources has no worker yet, so the wait is bounded."""
        if self.starting:
            ray.wait(list(self.starting), num_returns=len(self.starting), timeout=CLOSE_WAIT_SECONDS)
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.idle, self.starting = [], [], {}


class _Stream:
    """The dependency loop of one run (see the module docstring).

    Work per event is bounded by the window, not by the size of the run: units wait in
    `pending` (run order) until opened, and only the `open` ones are looked at."""

    def __init__(self, videos: list[Video], units: list[Unit], done: dict[str, ProgressRow], pool: _Pool, lease: Lease,
                 manifest: Manifest, config: RunConfig, storage_options, attempt: int, summary: RunSummary,
                 progress: Progress):
        """done: the commit rows of what earlier attempts finished, by id."""
        self.manifest, self.config, self.options, self.attempt = manifest, config, storage_options, attempt
        self.summary, self.progress = summary, progress
        self.videos = {v.video_id: v for v in videos if v.video_id not in done}
        self.of_video: dict[str, list[_Unit]] = {vid: [] for vid in self.videos}  # time order
        self.chains: dict[tuple, list[_Unit]] = {}  # per shot, time order: one noise chain
        for p in sorted(units, key=lambda p: (p.start, p.phase)):
            if p.video_id in self.of_video:
                chain = self.chains.setdefault(p.chain_key, [])
                unit = _Unit(p, len(chain))
                if p.id in done:
                    unit.state, unit.checksums = "done", done[p.id].checksums or {}
                self.of_video[p.video_id].append(unit)
                chain.append(unit)
        self.units = {u.plan.id: u for chain in self.chains.values() for u in chain}
        self.anchored = {}  # seam id → the clips it anchors
        for u in self.units.values():
            for seam in (u.plan.start_anchor, u.plan.end_anchor):
                self.anchored.setdefault(seam, []).append(u)
        self.pending = deque(u for chain in self.of_video.values() for u in chain if u.state == "waiting")
        self.open: list[_Unit] = []  # opened, not finished, in run order
        self.left = {vid: sum(u.state != "done" for u in chain) for vid, chain in self.of_video.items()}
        self.cursor = dict.fromkeys(self.chains, 0)  # per shot: the last unit whose coordinates are submitted
        self.pool, self.lease = pool, lease
        self.waiting: dict[ray.ObjectRef, tuple] = {ref: ("actor", a) for ref, a in pool.starting.items()}
        self.window = 4 * config.max_actors + 2  # open units: enough to feed every actor, bounded memory
        self.started, self.said_no_actor = time.monotonic(), False
        self.encodes = dict.fromkeys(self.videos, 0)  # encode tasks submitted per video
        self.commits = 0
        for key, chain in self.chains.items():
            self._load_committed(chain)
            self._extend_coords(key)
        for vid in self.of_video:
            if not self.left[vid]:  # every unit committed before, the video not yet written
                self._finish_video(vid)

    # -- bookkeeping -----------------------------------------------------------------

    def _light(self, fn):
        """`fn` as a light CPU task, beside the actors."""
        return fn.options(num_cpus=self.config.decode_cpus)

    def _wait(self, ref, *what):
        self.waiting[ref] = what

    def _load_committed(self, chain: list[_Unit]) -> None:
        """Read back, verified, what committed units hand on to uncommitted ones: the end
        maps of those before an open unit of the shot (its noise coordinates run through
        them), and the frames of the seams an open clip is anchored to."""
        cursor = self.cursor[chain[0].plan.chain_key]
        last_open = max((k for k, u in enumerate(chain) if u.state != "done"), default=-1)
        for k, u in enumerate(chain):
            if u.state != "done" or u.loading:
                continue
            need_end_map = cursor <= k < last_open and u.end_map is None
            need_frames = u.frames is None and any(c.state != "done" for c in self.anchored.get(u.plan.id, []))
            if need_end_map or need_frames:
                u.loading = True
                error, end_map, frames = self._light(load_unit).remote(self.manifest.dst, self.options, u.plan.id,
                                                                       u.checksums, need_frames)
                self._wait(error, "loaded", u, None, (end_map, frames if need_frames else None))
        chain[0].has_coords = True  # the identity

    def _redo(self, u: _Unit, reason: str) -> None:
        """A committed unit's payload is gone or damaged: record that, and compute the
        unit again (its bytes come out the same), before anything uses it."""
        commit(self.manifest, unit_row(u.plan, self.attempt, "failed", error=f"{reason}; recomputing the unit"))
        self.progress.message(f"recomputing {u.plan.describe()}: {reason}")
        self.progress.unit_redone(u.plan.frames)
        u.state, u.loading, u.checksums, u.decoded, u.flowed = "waiting", False, {}, None, None
        u.end_map = u.frames = None
        self.left[u.plan.video_id] += 1
        self.pending.appendleft(u)
        key = u.plan.chain_key
        chain = self.chains[key]
        if 0 < u.index < self.cursor[key] and u.coords is None:  # its coordinates were let go
            self._replay_coords(u)
        self._load_committed(chain)  # it may need what nothing needed before

    def _replay_coords(self, u: _Unit) -> None:
        """Compute `u`'s coordinates again from the stored end maps of the units before it
        (every one has flowed, or `u` would have no coordinates yet)."""
        chain = self.chains[u.plan.chain_key]
        end_maps = [(c.plan.id, c.checksums.get(end_map_key(c.plan.id)) or (c.flowed and c.flowed.end_map_checksum))
                    for c in chain[: u.index]]
        u.has_coords = False
        u.coords = self._light(replay_coords).remote(self.manifest.dst, self.options, end_maps)
        self._wait(u.coords, "coords", u)

    def _restart(self, u: _Unit, error: str) -> None:
        """A unit's task was lost with its worker (a process killed, a node gone): start the
        unit over from its decode. What it was handed may have been lost with the node
        too, so its coordinates are replayed from stored end maps and its anchors'
        frames read back from their payloads."""
        u.retries += 1
        self.progress.message(f"retrying {u.plan.describe()}: {error}")
        key = u.plan.chain_key
        if u.index < self.cursor[key]:
            u.end_map = None  # the scan took it already; the new one is not needed
        if u.index > 0 and u.has_coords:
            self._replay_coords(u)
        for seam in self._anchors(u):
            if seam is not None and seam.state == "done":
                seam.frames = None
        self._load_committed(self.chains[key])
        u.pixels, info = self._light(decode_unit).remote(u.plan, self.options)
        u.flows, u.state = None, "decoding"
        self._wait(info, "decoded", u)

    def _extend_coords(self, key: tuple) -> None:
        """Submit the coordinate scan of a shot as far as good end maps exist. The cursor
        is the last unit whose coordinates are submitted (or, for the first, known)."""
        chain, k = self.chains[key], self.cursor[key]
        while k + 1 < len(chain) and chain[k].state in ("flowed", "sampling", "done") and chain[k].end_map is not None:
            nxt = chain[k + 1]
            nxt.coords = self._light(advance_coords).remote(chain[k].coords, chain[k].end_map)
            self._wait(nxt.coords, "coords", nxt)
            chain[k].end_map = None  # the task holds it now
            if chain[k].state in ("done", "failed"):
                chain[k].coords = None
            k += 1
        self.cursor[key] = k

    def _anchors(self, u: _Unit) -> list[_Unit | None]:
        return [self.units.get(u.plan.start_anchor), self.units.get(u.plan.end_anchor)]

    def _ready_to_sample(self, u: _Unit) -> bool:
        return (u.state == "flowed" and u.has_coords
                and all(a is None or (a.state == "done" and a.frames is not None) for a in self._anchors(u)))

    def _settle(self, u: _Unit, state: str) -> None:
        """`u` is done or failed; the video is finished with its last unit. Frees what
        only `u` needed, and its coordinates and a seam's frames once nothing else does."""
        u.state, u.pixels, u.flows = state, None, None
        key = u.plan.chain_key
        if u.index < self.cursor[key] or u.index == len(self.chains[key]) - 1:  # the next unit's coords are submitted
            u.coords = None
        if u.plan.kind == "clip":
            u.frames = None
            for seam in self._anchors(u):
                if seam is not None and all(c.state in ("done", "failed") for c in self.anchored[seam.plan.id]):
                    seam.frames = None
        vid = u.plan.video_id
        self.left[vid] -= 1
        if not self.left[vid]:
            self._finish_video(vid)

    def _fail(self, u: _Unit, error: str, coords_broken: bool, committed: bool = False) -> None:
        """A failed row for `u` (`committed`: its worker wrote it), and for the units that need it."""
        if u.state in ("done", "failed"):
            return
        u.error = error
        if not committed:
            commit(self.manifest, unit_row(u.plan, self.attempt, "failed", error=error,
                                           started_at=u.decoded.started_at if u.decoded else None))
        self._settle(u, "failed")
        self.progress.unit_failed()
        reason = f"needs unit {u.plan.id} ({u.plan.kind} {u.plan.start}-{u.plan.stop}), which failed: {error}"
        for clip in self.anchored.get(u.plan.id, []):
            self._fail(clip, "sample: " + reason, coords_broken=False)
        if coords_broken:  # every later unit's noise coordinates in the shot run through this one
            chain = self.chains[u.plan.chain_key]
            for other in chain[chain.index(u) + 1 :]:
                self._fail(other, "coords: " + reason, coords_broken=False)

    # -- the loop --------------------------------------------------------------------

    def _open(self) -> None:
        self.open = [u for u in self.open if u.state not in ("done", "failed")]
        while self.pending and len(self.open) < self.window:
            u = self.pending.popleft()
            if u.state != "waiting":  # failed as a dependent before it was opened
                continue
            u.pixels, info = self._light(decode_unit).remote(u.plan, self.options)
            u.state = "decoding"
            self._wait(info, "decoded", u)
            self.open.append(u)

    def _grow_pool(self, ready_tasks: int) -> None:
        """Add one actor at a time, up to max_actors, while work waits for an idle one
        (and to replace lost ones)."""
        pool = self.pool
        want = len(pool.actors) < self.config.min_actors or (ready_tasks > len(pool.idle) and not pool.starting)
        if want and len(pool.actors) < self.config.max_actors:
            pool.grow()
            ref = next(reversed(pool.starting))
            self._wait(ref, "actor", pool.starting[ref])

    def _dispatch(self) -> None:
        flow_ready = [u for u in self.open if u.state == "decoded"]
        sample_ready = [u for u in self.open if self._ready_to_sample(u)]
        self._grow_pool(len(flow_ready) + len(sample_ready))
        for u in flow_ready + sample_ready:
            if not self.pool.idle:
                return
            # A unit samples where its flows were made if that actor is free: it kept what they prepared.
            actor = self.pool.idle.pop(self.pool.idle.index(u.flowed_on) if u.flowed_on in self.pool.idle else 0)
            if u.state == "decoded":
                u.flowed_on = actor
                info, u.flows, u.end_map = actor.flows.remote(u.plan, u.pixels)
                u.state = "flowing"
                self._wait(info, "flowed", u, actor)
            else:
                start, end = (a.frames if a else None for a in self._anchors(u))
                row, u.frames = actor.sample.remote(u.plan, u.pixels, u.flows, u.coords, start, end, u.decoded,
                                                    u.flowed, commit_name())
                u.state = "sampling"
                self._wait(row, "sampled", u, actor)

    def _finish_video(self, vid: str) -> None:
        """Encode a video whose units are all committed, or record why it failed."""
        video, chain = self.videos[vid], self.of_video[vid]
        failed = [u for u in chain if u.state == "failed"]
        if not failed:
            self.encodes[vid] += 1
            units = [(u.plan.id, u.checksums.get(u.plan.id)) for u in sorted(chain, key=lambda u: u.plan.out_start)]
            self._wait(self._light(encode_units).remote(video, units, self.manifest.dst, self.options, self.attempt),
                       "encoded", video)
            return
        self._video_failed(video, f"{len(failed)} of {len(chain)} units failed; first: {failed[0].error}")

    def _video_failed(self, video: Video, reason: str, committed: bool = False) -> None:
        """Record that `video` failed (`committed`: its encoder wrote the row)."""
        if not committed:
            commit(self.manifest, video_row(video.video_id, video.uri, self.attempt, "failed", error=reason))
        self.summary.videos_failed[video.uri] = reason
        self.progress.video_failed()
        self.progress.message(f"failed {video.uri}: {reason}")

    def _complete(self, ref, what: str, subject, actor=None, loaded=None) -> None:
        pool = self.pool
        if what == "actor":
            del pool.starting[ref]
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:  # a worker process died, an actor was lost
            result = _Lost(error_text(what, exc))
            if isinstance(exc, ray.exceptions.RayActorError):  # gone, or restarting: out of the pool
                gone = subject if what == "actor" else actor
                pool.actors.remove(gone)
                # Killed, not only dropped: an actor Ray is restarting would otherwise come back
                # holding its CPUs and GPUs beside its replacement while a unit still names it.
                ray.kill(gone)
                actor = None
                if what == "actor":
                    pool.failed_starts += 1
                    if not pool.started_any and pool.failed_starts >= MAX_FAILED_STARTS:
                        raise WorkerStartError(f"no worker actor could start ({pool.failed_starts} tries); the last "
                                               f"said: {result.error}")
                    return
        if actor is not None:
            pool.idle.append(actor)
        if isinstance(subject, _Unit) and subject.state == "failed":  # failed meanwhile, as a dependent
            return
        lost = isinstance(result, _Lost)
        if lost and what == "encoded" and self.encodes[subject.video_id] <= MAX_UNIT_RETRIES:
            self._finish_video(subject.video_id)  # its encoder's worker or node was lost: encode it again
            return
        if lost and what in ("decoded", "flowed", "sampled", "coords") and subject.retries < MAX_UNIT_RETRIES:
            if what == "coords":
                subject.retries += 1
                self._replay_coords(subject)
            else:
                self._restart(subject, result.error)
            return
        if what == "actor":
            pool.idle.append(subject)
            pool.started_any = True
        elif what == "loaded":
            subject.loading = False
            if lost or result:  # the task crashed, or a payload is gone or damaged
                self._redo(subject, result.error if lost else result)
                return
            end_map, frames = loaded
            key = subject.plan.chain_key
            if subject.index >= self.cursor[key]:  # else the scan went past it meanwhile
                subject.end_map = end_map
            subject.frames = frames if frames is not None else subject.frames
            self._extend_coords(key)
        elif lost and what == "encoded":
            self._video_failed(subject, result.error)
        elif lost:
            self._fail(subject, result.error, coords_broken=what != "sampled")
        elif what == "decoded":
            subject.decoded = result
            if result.error:
                self._fail(subject, result.error, coords_broken=True)
            else:
                subject.state = "decoded"
        elif what == "flowed":
            subject.flowed = result
            if result.error:
                self._fail(subject, result.error, coords_broken=True)
            else:
                subject.state = "flowed"
                key = subject.plan.chain_key
                if subject.index < self.cursor[key]:  # flowed again after a restart: the scan is past it
                    subject.end_map = None
                self._extend_coords(key)
        elif what == "coords":
            subject.has_coords = True
        elif what == "sampled":
            self.commits += 1
            if result.status == "done":
                self.summary.units_computed += 1
                subject.checksums = result.checksums
                self._settle(subject, "done")
                self.progress.unit_done(subject.plan.frames)
            else:
                self._fail(subject, result.error, coords_broken=False, committed=True)
            if self.commits % COMPACT_EVERY == 0:
                self.manifest.compact()
        elif what == "encoded":
            if isinstance(result, Redo):  # a unit's payload is gone or damaged: nothing was written
                self._redo(self.units[result.unit_id], result.error)
            elif result.status == "done":
                self.summary.videos_done.append(result.uri)
                self.progress.video_done()
                self.progress.message(f"done {result.uri} -> {subject.output}")
            else:
                self._video_failed(subject, result.error, committed=True)

    def run(self) -> None:
        while True:
            self.lease.check()  # another driver took DST over (this one was judged gone): stop writing
            self._open()
            # Work is left while units are pending or open, or a video is being encoded.
            if not (self.pending or self.open or any(what[0] != "actor" for what in self.waiting.values())):
                return
            self._dispatch()
            if not self.waiting:
                raise RuntimeError("the stream is stuck: no task in flight and units left")  # a bug, loudly
            ready, _ = ray.wait(list(self.waiting), num_returns=1, timeout=TICK_SECONDS)
            if ready:
                self._complete(ready[0], *self.waiting.pop(ready[0]))
            else:
                self.progress.show()
                self._say_if_no_actor_starts()

    def _say_if_no_actor_starts(self) -> None:
        """Say once why nothing happens when no worker actor could start (a GPU asked of a
        cluster without one, every CPU taken): the run waits for resources, as an
        autoscaling cluster must, but the user should know what it waits for."""
        pool = self.pool
        if self.said_no_actor or len(pool.starting) < len(pool.actors) or time.monotonic() - self.started < ACTOR_WAIT_SECONDS:
            return
        self.said_no_actor = True
        self.progress.message(
            f"no worker actor has started after {ACTOR_WAIT_SECONDS:.0f} s: each needs {self.config.actor_cpus:g} CPU "
            f"and {self.config.gpus_per_actor:g} GPU; the cluster has {_resources(ray.cluster_resources())} "
            f"({_resources(ray.available_resources())} free). Waiting for resources (Ctrl-C stops; the run resumes).")


def local_system_config(config: RunConfig) -> dict:
    """Ray settings for a local cluster this process starts.

    Ray keeps at most as many idle worker processes as the node has CPUs, and counts the
    worker actors among them: on a small machine, the light tasks' workers were then
    killed after every task, and each new one re-imported torch (measured: 4 workers
    for 8 tasks beside one actor; ~4.5 s of CPU each, taken from the actors). Room for
    the actors on top keeps one warm.
    """
    return {"num_workers_soft_limit": (os.cpu_count() or 1) + config.max_actors}


def run(src: str, dst: str, config: RunConfig, storage_options: dict | None = None, address: str | None = None,
        quiet: bool = False, verbose: bool = False) -> RunSummary:
    """Restore every video under `src` into `dst`; resumable. See the module docstring.

    Shows a progress display on stderr (`quiet`: nothing). Ray's own logs stay in its
    session's log folder unless `verbose`. Uses the caller's Ray if it started one,
    else connects to `address` or starts an embedded local Ray for the run."""
    started = time.perf_counter()
    listing = list_videos(src, storage_options)  # first: a missing source is refused before anything is written or started
    manifest = Manifest(dst, storage_options)
    options, credentials = split_credentials(storage_options)
    with contextlib.ExitStack() as held:  # let go in reverse: the actors, Ray, the lease
        lease = held.enter_context(Lease(manifest))  # one writer per DST; refuses a second driver
        attempt = manifest.start_run(config.to_dict(), config.hash())  # refuses a different config
        embedded = not ray.is_initialized()
        if embedded:
            _init_ray(config, address, verbose, credentials)
            held.callback(ray.shutdown)
        pool = _Pool(config, manifest.dst, options, attempt)  # first: models load while probing
        held.callback(pool.close)
        summary = _run(pool, lease, listing, dst, config, options, manifest, attempt, quiet)
        if embedded and not address:
            summary.ray_logs = os.path.join(_session_dir(), "logs")
    summary.seconds = time.perf_counter() - started
    return summary


CREDENTIALS = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN"}


def split_credentials(storage_options: dict | None) -> tuple[dict | None, dict]:
    """(the storage options tasks and actors get, the credentials taken out of them as
    environment variables). Secrets never travel as task arguments, where Ray's
    dashboard and state API show them: workers read them from their environment (the
    embedded Ray's inherit the driver's; a cluster's come from the job's runtime env
    or the nodes' instance roles)."""
    if not storage_options:
        return storage_options, {}
    options = {k: v for k, v in storage_options.items() if k not in CREDENTIALS}
    return options, {CREDENTIALS[k]: v for k, v in storage_options.items() if k in CREDENTIALS and v}


def _session_dir() -> str:
    return ray._private.worker.global_worker.node.get_session_dir_path()  # no public API names it


def _init_ray(config: RunConfig, address: str | None, verbose: bool, credentials: dict) -> None:
    """Connect to `address`, or start an embedded local Ray. Ray's progress and logs go
    to its session's log files unless `verbose`. `credentials` (environment variables)
    go to every worker through the job's runtime env."""
    if not verbose:  # token auth stays on, Ray's default for a local cluster; only its notice goes
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    quiet = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    before = signal.getsignal(signal.SIGTERM)
    if credentials:
        quiet["runtime_env"] = {"env_vars": credentials}
    if address:
        ray.init(address=address, **quiet)
    else:
        # One logical CPU more than the machine has, for the light decode/encode/coordinate
        # tasks: the worker actors may then take every core (the defaults, 2 actors × 1 CPU,
        # would otherwise leave no CPU to decode with on 2 cores, and the run would stall).
        # address="local": a new cluster, never one a `ray start` on this machine left its address for.
        ray.init(address="local", num_cpus=(os.cpu_count() or 1) + 1, include_dashboard=False,
                 _system_config=local_system_config(config), **quiet)
    if threading.current_thread() is threading.main_thread():
        # Ray's core worker puts a crash handler on SIGTERM that aborts the process, so no
        # cleanup would run: a Python handler back (the caller's, else Ray's own).
        signal.signal(signal.SIGTERM, before if callable(before) else signal.getsignal(signal.SIGTERM))


def _find_shots(videos: list[Video], manifest: Manifest, config: RunConfig, storage_options) -> dict[str, object]:
    """{video_id: its shots [(start, stop, content)], or an error string}: read back from
    the manifest where a previous run scanned the video, else scanned now, every span of
    every video at once."""
    try:
        rows = manifest.read_table("shots").to_pylist()
    except FileNotFoundError:
        rows = []
    known: dict[str, list] = {}
    for r in sorted(rows, key=lambda r: (r["video_id"], r["shot"])):
        known.setdefault(r["video_id"], []).append((r["start"], r["stop"], r["content"]))
    found, scans = {}, {}
    for v in videos:
        if v.video_id in known:
            found[v.video_id] = known[v.video_id]
        elif config.shot_threshold == 0:
            found[v.video_id] = [(0, v.frames, "")]
        else:
            scans[v.video_id] = [_scan.options(num_cpus=config.decode_cpus).remote(v.uri, a, b, config.shot_threshold,
                                                                                   storage_options)
                                 for a, b in rshots.scan_spans(v.frames)]
    for v in videos:
        if v.video_id in scans:
            spans = ray.get(scans[v.video_id])
            unusable = next((span.error for span in spans if isinstance(span, Unusable)), None)
            found[v.video_id] = unusable or rshots.shots(v.frames, spans)
    return found


def _outputs_lost(videos: list[Video], done: dict[str, ProgressRow], storage_options) -> list[tuple[Video, str]]:
    """(video, what is wrong) for each video committed as done whose output is gone or is
    not the size its commit recorded (a video can be encoded again from its payloads)."""

    def check(v: Video) -> str:
        fs, path = filesystem(v.output, storage_options)
        try:
            fs.invalidate_cache(path)
            size = fs.info(path)["size"]
        except FileNotFoundError:
            return f"output {v.output} is missing"
        expected = done[v.video_id].output_bytes
        return f"output {v.output} has {size} bytes, its commit recorded {expected}" if expected not in (None, size) else ""

    committed = [v for v in videos if v.video_id in done]
    with ThreadPoolExecutor(max_workers=16) as pool:  # one HEAD each: many at once on S3
        return [(v, problem) for v, problem in zip(committed, pool.map(check, committed)) if problem]


def _run(pool: _Pool, lease: Lease, listing: Listing, dst, config, storage_options, manifest: Manifest, attempt: int,
         quiet: bool) -> RunSummary:
    summary = RunSummary(dst, skipped=listing.skipped)
    uris = listing.videos
    # Light tasks, like decode: the pool's actors (started above) may hold most CPUs.
    probed = ray.get([_probe.options(num_cpus=config.decode_cpus).remote(u, storage_options) for u in uris])
    config_hash = config.hash()
    outputs = output_uris(dst, uris)
    videos, bad = [], []  # bad: (video id, uri, why it cannot be used)
    for p in probed:
        if isinstance(p, Unusable):
            bad.append((rplan.video_id(p.uri, "unreadable", config_hash), p.uri, p.error))
        else:
            videos.append(dataclasses.replace(p, video_id=rplan.video_id(p.uri, p.fingerprint, config_hash),
                                              output=outputs[p.uri]))
    lease.check()
    shots = _find_shots(videos, manifest, config, storage_options)
    lease.check()
    bad += [(v.video_id, v.uri, shots[v.video_id]) for v in videos if isinstance(shots[v.video_id], str)]
    videos = [dataclasses.replace(v, shots=len(shots[v.video_id])) for v in videos
              if not isinstance(shots[v.video_id], str)]
    units = [u for v in videos for u in rplan.plan_video(v, shots[v.video_id], config)]
    manifest.write_table("videos", [v.to_row() for v in videos], schema=Video.schema())
    manifest.write_table("shots", [{"video_id": v.video_id, "uri": v.uri, "shot": k, "start": a, "stop": b,
                                    "frames": b - a, "content": content}
                                   for v in videos for k, (a, b, content) in enumerate(shots[v.video_id])])
    manifest.write_table("clips", [u.to_row() for u in units], schema=Unit.schema())
    manifest.write_table("skipped", [{"uri": uri, "reason": reason} for uri, reason in listing.skipped.items()],
                         schema=SKIPPED_SCHEMA)
    for vid, uri, error in bad:  # a video that cannot be used gets its row now; the others go on
        commit(manifest, video_row(vid, uri, attempt, "failed", error=error))
        summary.videos_failed[uri] = error

    manifest.compact()  # a bounded log for this run's reads
    done = manifest.committed()
    for v, problem in _outputs_lost(videos, done, storage_options):  # written before, gone or changed since
        commit(manifest, video_row(v.video_id, v.uri, attempt, "failed", error=f"{problem}; encoding it again"))
        del done[v.video_id]
    summary.videos_done += [v.uri for v in videos if v.video_id in done]
    summary.units_skipped = sum(u.id in done for u in units)
    progress = Progress(len(videos) + len(bad), len(units), sum(u.frames for u in units),
                        done_videos=len(summary.videos_done), done_units=summary.units_skipped,
                        done_frames=sum(u.frames for u in units if u.id in done), failed_videos=len(bad),
                        quiet=quiet)
    progress.message(f"{len(videos)} videos, {sum(v.shots for v in videos)} shots, {len(units)} units planned "
                     f"({len(bad)} unusable); manifest in {manifest.root}")
    for uri, error in summary.videos_failed.items():
        progress.message(f"failed {uri}: {error}")
    for uri, reason in list(listing.skipped.items())[:SKIPPED_SHOWN]:
        progress.message(f"not taken {uri}: {reason}")
    if len(listing.skipped) > SKIPPED_SHOWN:
        progress.message(f"... and {len(listing.skipped) - SKIPPED_SHOWN} more files not taken "
                         f"(all in {manifest.uri('skipped.parquet')})")
    for v in videos:
        if v.not_copied:
            progress.message(f"{v.uri}: not copied to the output: {v.not_copied}")
    progress.show(force=True)
    try:
        _Stream(videos, units, done, pool, lease, manifest, config, storage_options, attempt, summary, progress).run()
    finally:
        progress.close()
    manifest.compact()
    return summary
