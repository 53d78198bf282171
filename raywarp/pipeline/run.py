"""The driver: probe → plan → stream every unit through decode → flows → sample → encode.

One streaming run on Ray Core. Every unit of every video goes through the same stages,
and starts each as soon as its own inputs exist:

    decode(u)     CPU task                         when u enters the window
    flows(u)      worker actor   ← decode(u)
    coords(u)     advance_coords ← coords and end map of the unit before u in its video
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
row, and so does every unit that needed it (later units of its video need its end map
for their noise coordinates; clips need their seams).
"""

from __future__ import annotations

import os
import posixpath
import time
from collections import deque
from dataclasses import dataclass, field

import ray

from raywarp.pipeline import clip as rclip
from raywarp.pipeline import plan as rplan
from raywarp.pipeline import stages
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.manifest import COMPACT_EVERY, Manifest
from raywarp.pipeline.source import VideoError, list_videos, probe
from raywarp.pipeline.stages import UnitWorker, end_map_key, error_text, progress_row

decode_unit = ray.remote(num_returns=2)(stages.decode_unit)
advance_coords = ray.remote(rclip.advance)
load_array = ray.remote(stages.load_array)
encode_units = ray.remote(stages.encode_units)


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


@dataclass
class _Unit:
    """A unit's place in the stream: the refs of what exists of it so far."""

    row: dict  # its plan row
    state: str = "waiting"  # waiting → decoding → decoded → flowing → flowed → sampling → done | failed
    pixels: ray.ObjectRef | None = None
    timing: dict = field(default_factory=dict)
    flows: ray.ObjectRef | None = None
    end_map: ray.ObjectRef | None = None
    coords: ray.ObjectRef | None = None  # its first frame's GP coordinates (None: identity)
    has_coords: bool = False
    frames: ray.ObjectRef | None = None  # a seam's frames, anchors of its clips


class _Pool:
    """The run's worker actors: the first `min_actors` start before the videos are even
    probed (loading models overlaps probing and planning); `grow` adds one at a time."""

    def __init__(self, config: RunConfig, dst: str, storage_options, attempt: int):
        self.worker = ray.remote(UnitWorker).options(
            num_cpus=config.actor_cpus, num_gpus=config.gpus_per_actor, max_restarts=3, max_task_retries=1)
        self.args = (config.to_dict(), dst, storage_options, attempt)
        self.actors, self.idle = [], []
        self.starting: dict[ray.ObjectRef, object] = {}  # ready() ref → actor
        for _ in range(config.min_actors):
            self.grow()

    def grow(self) -> None:
        actor = self.worker.remote(*self.args)
        self.actors.append(actor)
        self.starting[actor.ready.remote()] = actor


class _Stream:
    """The dependency loop of one run (see the module docstring).

    Work per event is bounded by the window, not by the size of the run: units wait in
    `pending` (run order) until opened, and only the `open` ones are looked at."""

    def __init__(self, videos: list[dict], units: list[dict], done: set[str], pool: _Pool, manifest: Manifest,
                 config: RunConfig, storage_options, attempt: int, summary: RunSummary, log):
        self.manifest, self.config, self.options, self.attempt = manifest, config, storage_options, attempt
        self.summary, self.log = summary, log
        self.videos = {v["video_id"]: v for v in videos if v["video_id"] not in done}
        self.chains: dict[str, list[_Unit]] = {vid: [] for vid in self.videos}  # time order
        for u in sorted(units, key=lambda u: (u["start"], u["phase"])):
            if u["video_id"] in self.chains:
                self.chains[u["video_id"]].append(_Unit(u, state="done" if u["id"] in done else "waiting"))
        self.units = {u.row["id"]: u for chain in self.chains.values() for u in chain}
        self.anchored = {}  # seam id → the clips it anchors
        for u in self.units.values():
            for key in ("start_anchor", "end_anchor"):
                self.anchored.setdefault(u.row[key], []).append(u)
        self.pending = deque(u for chain in self.chains.values() for u in chain if u.state == "waiting")
        self.open: list[_Unit] = []  # opened, not finished, in run order
        self.left = {vid: sum(u.state != "done" for u in chain) for vid, chain in self.chains.items()}
        self.cursor = dict.fromkeys(self.chains, 0)  # per video: the first unit without coordinates
        self.pool = pool
        self.waiting: dict[ray.ObjectRef, tuple] = {ref: ("actor", a) for ref, a in pool.starting.items()}
        self.window = 4 * config.max_actors + 2  # open units: enough to feed every actor, bounded memory
        self.commits = 0
        for vid, chain in self.chains.items():
            self._load_committed(chain)
            self._extend_coords(vid)
            if not self.left[vid]:  # every unit committed before, the video not yet written
                self._finish_video(vid)

    # -- bookkeeping -----------------------------------------------------------------

    def _light(self, fn):
        """`fn` as a light CPU task, beside the actors."""
        return fn.options(num_cpus=self.config.decode_cpus)

    def _wait(self, ref, *what):
        self.waiting[ref] = what

    def _load_committed(self, chain: list[_Unit]) -> None:
        """What committed units hand on to uncommitted ones: end maps, a seam's frames."""
        last_open = max((k for k, u in enumerate(chain) if u.state != "done"), default=-1)
        for u in chain[:last_open]:
            if u.state == "done":
                u.end_map = self._light(load_array).remote(self.manifest.dst, self.options, end_map_key(u.row["id"]), "end_map")
                if u.row["kind"] == "seam":
                    u.frames = self._light(load_array).remote(self.manifest.dst, self.options, u.row["id"], "frames")
        chain[0].has_coords = True  # the identity

    def _extend_coords(self, vid: str) -> None:
        """Submit the coordinate scan of a video as far as good end maps exist. The cursor
        is the last unit whose coordinates are submitted (or, for the first, known)."""
        chain, k = self.chains[vid], self.cursor[vid]
        while k + 1 < len(chain) and chain[k].state in ("flowed", "sampling", "done") and chain[k].end_map is not None:
            nxt = chain[k + 1]
            nxt.coords = self._light(advance_coords).remote(chain[k].coords, chain[k].end_map)
            self._wait(nxt.coords, "coords", nxt)
            k += 1
        self.cursor[vid] = k

    def _anchors(self, u: _Unit) -> list[_Unit | None]:
        return [self.units.get(u.row[k]) for k in ("start_anchor", "end_anchor")]

    def _ready_to_sample(self, u: _Unit) -> bool:
        return (u.state == "flowed" and u.has_coords
                and all(a is None or a.state == "done" for a in self._anchors(u)))

    def _settle(self, u: _Unit, state: str) -> None:
        """`u` is done or failed; the video is finished with its last unit."""
        u.state, u.pixels, u.flows = state, None, None  # free them in the object store
        vid = u.row["video_id"]
        self.left[vid] -= 1
        if not self.left[vid]:
            self._finish_video(vid)

    def _fail(self, u: _Unit, error: str, coords_broken: bool, committed: bool = False) -> None:
        """A failed row for `u` (`committed`: its worker wrote it), and for the units that need it."""
        if u.state in ("done", "failed"):
            return
        if not committed:
            now = time.time()
            self.manifest.append_progress([progress_row(u.row, self.attempt, status="failed", frames=0, error=error,
                                                        started_at=u.timing.get("started_at", now), finished_at=now)])
        self._settle(u, "failed")
        reason = f"needs unit {u.row['id']} ({u.row['kind']} {u.row['start']}-{u.row['stop']}), which failed: {error}"
        for clip in self.anchored.get(u.row["id"], []):
            self._fail(clip, "sample: " + reason, coords_broken=False)
        if coords_broken:  # every later unit's noise coordinates run through this one
            chain = self.chains[u.row["video_id"]]
            for other in chain[chain.index(u) + 1 :]:
                self._fail(other, "coords: " + reason, coords_broken=False)

    # -- the loop --------------------------------------------------------------------

    def _open(self) -> None:
        self.open = [u for u in self.open if u.state not in ("done", "failed")]
        while self.pending and len(self.open) < self.window:
            u = self.pending.popleft()
            if u.state != "waiting":  # failed as a dependent before it was opened
                continue
            u.pixels, info = self._light(decode_unit).remote(u.row, self.options)
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
            actor = self.pool.idle.pop(0)
            if u.state == "decoded":
                info, u.flows, u.end_map = actor.flows.remote(u.row, u.pixels)
                u.state = "flowing"
                self._wait(info, "flowed", u, actor)
            else:
                start, end = (a.frames if a else None for a in self._anchors(u))
                row, u.frames = actor.sample.remote(u.row, u.pixels, u.flows, u.coords, start, end, u.timing)
                u.state = "sampling"
                self._wait(row, "sampled", u, actor)

    def _finish_video(self, vid: str) -> None:
        """Encode a video whose units are all committed, or record why it failed."""
        video, chain = self.videos[vid], self.chains[vid]
        failed = [u for u in chain if u.state == "failed"]
        if not failed:
            ids = [u.row["id"] for u in sorted(chain, key=lambda u: u.row["out_start"])]
            self._wait(self._light(encode_units).remote(video, ids, self.manifest.dst, self.options, self.attempt),
                       "encoded", video)
            return
        first = self.manifest.latest().get(failed[0].row["id"], {}).get("error") or "no result"
        reason = f"{len(failed)} of {len(chain)} units failed; first: {first}"
        now = time.time()
        self.manifest.append_progress([{"id": vid, "video_id": vid, "uri": video["uri"], "kind": "video",
                                        "status": "failed", "attempt": self.attempt, "error": reason,
                                        "frames": 0, "started_at": now, "finished_at": now}])
        self.summary.videos_failed[video["uri"]] = reason
        self.log(f"FAILED {video['uri']}: {reason}")

    def _complete(self, ref, what: str, subject, actor=None) -> None:
        pool = self.pool
        if what == "actor":
            del pool.starting[ref]
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:  # a worker process died, an actor was lost
            result = {"error": error_text(what, exc), "status": "failed", "crashed": True}
            if isinstance(exc, ray.exceptions.RayActorError):  # gone for good: out of the pool
                pool.actors.remove(subject if what == "actor" else actor)
                actor = None
                if what == "actor":
                    return
        if actor is not None:
            pool.idle.append(actor)
        if isinstance(subject, _Unit) and subject.state == "failed":  # failed meanwhile, as a dependent
            return
        if what == "actor":
            pool.idle.append(subject)
        elif what == "decoded":
            subject.timing.update(result)
            if result["error"]:
                self._fail(subject, result["error"], coords_broken=True)
            else:
                subject.state = "decoded"
        elif what == "flowed":
            subject.timing["seconds_flow"] = result.get("seconds_flow", 0.0)
            if result["error"]:
                self._fail(subject, result["error"], coords_broken=True)
            else:
                subject.state = "flowed"
                self._extend_coords(subject.row["video_id"])
        elif what == "coords":
            if isinstance(result, dict):  # the task crashed
                self._fail(subject, result["error"], coords_broken=True)
            else:
                subject.has_coords = True
        elif what == "sampled":
            self.commits += 1
            if result.get("status") == "done":
                self.summary.units_computed += 1
                self._settle(subject, "done")
            else:
                self._fail(subject, result["error"], coords_broken=False, committed=not result.get("crashed"))
            if self.commits % COMPACT_EVERY == 0:
                self.manifest.compact()
        elif what == "encoded":
            if result["status"] == "done":
                self.summary.videos_done.append(result["uri"])
                self.log(f"done {result['uri']} -> {subject['output']}")
            else:
                self.summary.videos_failed[result["uri"]] = result["error"]
                self.log(f"FAILED {result['uri']}: {result['error']}")

    def run(self) -> None:
        while True:
            self._open()
            # Work is left while units are pending or open, or a video is being encoded.
            if not (self.pending or self.open or any(what[0] != "actor" for what in self.waiting.values())):
                return
            self._dispatch()
            if not self.waiting:
                raise RuntimeError("the stream is stuck: no task in flight and units left")  # a bug, loudly
            ready, _ = ray.wait(list(self.waiting), num_returns=1)
            self._complete(ready[0], *self.waiting.pop(ready[0]))


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
        log=print) -> RunSummary:
    """Restore every video under `src` into `dst`; resumable. See the module docstring."""
    started = time.perf_counter()
    manifest = Manifest(dst, storage_options)
    attempt = manifest.start_run(config.to_dict(), config.hash())  # refuses a different config
    embedded = not ray.is_initialized()
    if embedded and address:
        ray.init(address=address, log_to_driver=False)
    elif embedded:
        # One logical CPU more than the machine has, for the light decode/encode/coordinate
        # tasks: the worker actors may then take every core (the defaults, 2 actors × 1 CPU,
        # would otherwise leave no CPU to decode with on 2 cores, and the run would stall).
        ray.init(num_cpus=(os.cpu_count() or 1) + 1, log_to_driver=False, include_dashboard=False,
                 _system_config=local_system_config(config))
    try:
        summary = _run(src, dst, config, storage_options, manifest, attempt, log)
    finally:
        if embedded:
            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary


def _run(src, dst, config, storage_options, manifest: Manifest, attempt: int, log) -> RunSummary:
    summary = RunSummary(dst)
    pool = _Pool(config, manifest.dst, storage_options, attempt)
    uris = list_videos(src, storage_options)
    # Light tasks, like decode: the pool's actors (started above) may hold most CPUs.
    probed = ray.get([_probe.options(num_cpus=config.decode_cpus).remote(u, storage_options) for u in uris])
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

    manifest.compact()  # a bounded log for this run's reads
    done = manifest.committed()
    summary.videos_done += [v["uri"] for v in videos if v["video_id"] in done]
    summary.units_skipped = sum(u["id"] in done for u in units)
    _Stream(videos, units, done, pool, manifest, config, storage_options, attempt, summary, log).run()
    manifest.compact()
    return summary
