"""The run's bookkeeping: what was planned, what is done, where the results are.

Everything lives under ``DST/_raywarp/`` (DST a local directory or ``s3://bucket/prefix``)
and goes through fsspec only, so the driver, Ray workers and ``raywarp status DST`` all
see the same state::

    DST/_raywarp/run.json                 config + config_hash + created_at + attempts (start times)
    DST/_raywarp/videos.parquet           probe table: one row per source video
    DST/_raywarp/clips.parquet            plan table: one row per unit of work (id, frames, ...)
    DST/_raywarp/skipped.parquet          files under SRC not taken as videos, and why
    DST/_raywarp/progress/part-*.parquet        append-only: one file per commit (rows of clip/video attempts)
    DST/_raywarp/progress/segment-<N>-*.parquet   rows of folded parts and segments, written by compaction N
    DST/_raywarp/progress/checkpoint-<N>.json     compaction N's snapshot: its live segments and the parts they hold
    DST/_raywarp/payload/<key>.zip              arrays: frames as PNG (lossless), others as deflated .npy
    DST/_raywarp/lease/                         which run writes DST now (raywarp.pipeline.lease)

Commit protocol. S3 has no atomic rename, so nothing is ever moved into place:

1. A unit writes its payload first, to a deterministic key (``payload/<key>.zip`` or the
   output video). A retry overwrites it with identical bytes, so a half-finished attempt
   leaves nothing a later one could trip over.
2. The commit record comes last: a progress row with status 'done' (or 'failed'), with
   the sha256 of every payload it commits; reads check it (``get_arrays(key, expected)``),
   so a payload lost or damaged in storage is found before it is used.
   Progress is append-only: every ``append_progress`` call PUTs one new part file with a
   unique name; no part file is ever rewritten, so concurrent writers never race.
3. The state of a unit is its latest progress row (by ``finished_at``). A unit whose
   payload exists but has no 'done' row is simply redone.

Compaction, so that reading the log costs a bounded number of files however many
commits a run makes, and writing it costs O(N log N) bytes over a run (a snapshot in
the manner of Delta Lake's and Iceberg's, with the tiered merges of an LSM tree).
``compact()`` reads the newest checkpoint N and the part files it does not name (a
segment only when it merges it). It folds those parts into a new level-0 segment; wherever the newest
``FANOUT`` segments share a level, it merges them into one segment of the next level
(rows keep their write order: segments run from the oldest, highest level to the
newest). It writes the new segments, then checkpoint N+1 naming the live segments and
the parts they hold, create-once (``If-None-Match: *`` on S3, a hard link locally), and
only then deletes the parts it names, older checkpoints and segments of older
compactions that it does not name. Readers take the newest checkpoint, its segments
and the parts it does not name, so an interrupted compaction loses nothing: before the
checkpoint exists nothing changed (its new segments are named by no checkpoint, and
the next compaction deletes them); after, the parts it names are ignored whether
deleted or not, and the next compaction deletes the leftovers. Two compactors racing
for N+1: one wins, the other deletes its segments and gives up. A reader whose listing
went stale under a compactor's deletes reads again. A row is rewritten once per level,
and a level holds ``FANOUT`` times the rows of the one below it.

Every file is serialised in memory and written with one PUT (locally: a temp file
renamed into place), so readers never see half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone

import cv2
import fsspec
import numpy as np
import pyarrow.compute as pc
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from raywarp.pipeline.progress import format_seconds
from raywarp.pipeline.records import ProgressRow

PROGRESS_SCHEMA = ProgressRow.schema()
TABLES = ("videos", "shots", "clips", "skipped")

# A fixed zip member date keeps payload bytes a function of the arrays alone.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_PNG_LEVEL = [cv2.IMWRITE_PNG_COMPRESSION, 3]  # zlib level: close to 9's size at a fraction of its time
COMPACT_EVERY = 256  # uncommitted part files a reader may meet before the driver compacts
FANOUT = 8  # segments of one level merged into one of the next
_READ_RETRIES = 5


@dataclass
class _Log:
    """One read of the progress log."""

    checkpoints: list[tuple[int, str]]  # every checkpoint listed (number, path), the newest last
    parts: list[str]  # every part file listed
    segment_files: list[str]  # every segment file listed
    held: set[str] = field(default_factory=set)  # part names the newest checkpoint holds
    segments: list[tuple[str, int, pa.Table | None]] = field(default_factory=list)  # its live (name, level, rows
    # or None where not read), oldest first
    fresh: list[str] = field(default_factory=list)  # part paths read beside it
    rows: pa.Table | None = None

    @property
    def number(self) -> int:
        """The newest checkpoint's number (0: none yet)."""
        return self.checkpoints[-1][0] if self.checkpoints else 0


class ConfigMismatchError(Exception):
    """DST already holds a run made with a different config."""


class PayloadError(Exception):
    """A committed payload is missing, or its bytes are not those its commit recorded."""


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Manifest:
    """Bookkeeping of one run under ``DST/_raywarp`` (see the module docstring).

    ``fs`` is the fsspec filesystem it uses; ``uri(rel)`` gives full URIs of its files.
    """

    def __init__(self, dst: str, storage_options: dict | None = None):
        self.dst = dst.rstrip("/")
        self.root = self.dst + "/_raywarp"
        remote = fsspec.utils.get_protocol(self.root) not in ("file", "local")
        self.storage_options = dict(storage_options or {}) if remote else {}
        self.fs, self._root = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self._local = isinstance(self.fs, LocalFileSystem)

    # -- paths and raw I/O ----------------------------------------------------------

    def uri(self, rel: str) -> str:
        """Full URI of ``rel`` under the manifest root."""
        return f"{self.root}/{rel}"

    def _path(self, rel: str) -> str:
        return f"{self._root}/{rel}"

    def _put(self, rel: str, data: bytes, create: bool = False) -> str:
        """Write ``data`` at ``rel`` in one go; returns its URI.

        create: only if nothing is there yet, atomically; FileExistsError otherwise.
        """
        path = self._path(rel)
        if self._local:
            # A local write is not atomic; a rename (or a link) within the directory is.
            parent, name = path.rsplit("/", 1)
            self.fs.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"
            self.fs.pipe_file(tmp, data)
            if create:
                try:
                    os.link(tmp, path)  # fails if `path` exists
                finally:
                    os.unlink(tmp)
            else:
                self.fs.mv(tmp, path)
        else:  # one PUT: S3 never shows a partial object; If-None-Match: * for create
            self.fs.pipe_file(path, data, **({"mode": "create"} if create else {}))
        return self.uri(rel)

    def _get(self, rel: str) -> bytes:
        return self.fs.cat_file(self._path(rel))

    # -- raw files, for what else lives under the root (the lease) ------------------

    def write_bytes(self, rel: str, data: bytes, create: bool = False) -> str:
        """Write ``data`` at ``rel`` in one go, readers never see half of it; returns its
        URI. create: only if nothing is there yet, atomically; FileExistsError otherwise."""
        return self._put(rel, data, create)

    def read_bytes(self, rel: str) -> bytes:
        """The bytes at ``rel``; FileNotFoundError if there are none."""
        return self._get(rel)

    def list_names(self, folder: str) -> list[str]:
        """Names of the files in ``folder`` now (other processes write: not s3fs's cached
        listing); [] if it does not exist."""
        path = self._path(folder)
        self.fs.invalidate_cache(path)
        try:
            return sorted(_name(p) for p in self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []

    def remove(self, rels: list[str]) -> None:
        """Delete the files at ``rels``."""
        if rels:
            self.fs.rm([self._path(rel) for rel in rels])

    # -- run.json -------------------------------------------------------------------

    def run_info(self) -> dict | None:
        """Contents of run.json, or None before the first ``start_run``."""
        try:
            return json.loads(self._get("run.json"))
        except FileNotFoundError:
            return None

    def start_run(self, config: dict, config_hash: str) -> int:
        """Record a (re)start of the run; returns the attempt number (1, 2, ...).

        Raises ConfigMismatchError if DST holds a run with a different config_hash:
        resuming it would mix outputs of two configs.
        """
        # Stored as JSON, so compare and store the JSON form (tuples -> lists, ...).
        config = json.loads(json.dumps(config, default=str))
        now = time.time()
        info = self.run_info()
        if info is None:
            info = {"config": config, "config_hash": config_hash, "created_at": now, "attempts": []}
        elif info["config_hash"] != config_hash:
            raise ConfigMismatchError(self._mismatch_message(info, config, config_hash))
        info["attempts"].append(now)
        self._put("run.json", json.dumps(info, indent=2, sort_keys=True).encode())
        return len(info["attempts"])

    def _mismatch_message(self, info: dict, config: dict, config_hash: str) -> str:
        changes = _config_diff(info.get("config", {}), config)
        listed = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
        return (
            f"{self.dst} already holds a run with a different config "
            f"(config_hash {info['config_hash']} there, {config_hash} now).\n"
            + (f"Changed keys (old -> new):\n{listed}\n" if changes
               else "No config key differs; the hash covers something else (e.g. the code version).\n")
            + f"Use a new --out, or delete {self.root} to start this output over."
        )

    # -- plan tables ----------------------------------------------------------------

    def table_path(self, name: str) -> str:
        """Full URI of table ``name`` ('videos' or 'clips')."""
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}; expected one of {TABLES}")
        return self.uri(f"{name}.parquet")

    def write_table(self, name: str, rows: list[dict], schema: pa.Schema | None = None) -> str:
        """Write table ``name`` from ``rows`` (replacing it); returns its URI."""
        self.table_path(name)  # validates the name
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
        return self._put(f"{name}.parquet", buf.getvalue())

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Read table ``name``; FileNotFoundError if it was never written."""
        self.table_path(name)
        return pq.read_table(io.BytesIO(self._get(f"{name}.parquet")), columns=columns)

    # -- progress -------------------------------------------------------------------

    def append_progress(self, rows: list[ProgressRow], name: str | None = None) -> str:
        """Commit ``rows`` as one new part file; returns its URI.

        ``name`` (from `commit_name`) makes the commit create-once: a retried task that
        commits under the same name finds it there and adds nothing.
        """
        if not rows:
            raise ValueError("append_progress needs at least one row")
        if not all(isinstance(r, ProgressRow) for r in rows):
            raise TypeError(f"append_progress takes ProgressRow records, not {sorted({type(r).__name__ for r in rows})}")
        rows = [r.to_row() for r in rows]
        rel = f"progress/part-{name or commit_name()}.parquet"
        data = _parquet_bytes(pa.Table.from_pylist(rows, schema=PROGRESS_SCHEMA))
        try:
            return self._put(rel, data, create=name is not None)
        except FileExistsError:
            return self.uri(rel)  # this very commit was made by an earlier try

    def _log_files(self) -> tuple[list[tuple[int, str]], list[str], list[str]]:
        """(checkpoints as (number, path) in number order, part paths in name order, segment paths)."""
        folder = self._path("progress")
        self.fs.invalidate_cache(folder)  # other processes write: drop s3fs's cached listing
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            names = []
        checkpoints, parts, segments = [], [], []
        for path in names:
            name = _name(path)
            if name.startswith("checkpoint-") and name.endswith(".json"):
                checkpoints.append((int(name[len("checkpoint-"):-len(".json")]), path))
            elif name.startswith("part-") and name.endswith(".parquet"):
                parts.append(path)
            elif name.startswith("segment-") and name.endswith(".parquet"):
                segments.append(path)
            elif name.startswith("checkpoint-") and name.endswith(".parquet"):
                raise ValueError(f"{self.root}/progress/{name}: a progress log written by a raywarp before tiered "
                                 "compaction (2026-12-08), which this version does not read; restore into a new --out")
        return sorted(checkpoints), sorted(parts), segments

    def _read_log(self, segments: bool = True) -> _Log:
        """The progress log (`segments`=False: the parts beside the checkpoint only, its
        segments named, not read); lists again when a compactor deleted files between the
        listing and the reads."""
        for _ in range(_READ_RETRIES):
            log = _Log(*self._log_files())
            try:
                live = []
                if log.checkpoints:
                    snapshot = json.loads(self.fs.cat_file(log.checkpoints[-1][1]))
                    log.held, live = set(snapshot["parts"]), snapshot["segments"]
                log.fresh = [p for p in log.parts if _name(p) not in log.held]
                paths = [self._segment_path(name) for name, _ in live] if segments else []
                paths += log.fresh
                blobs = self.fs.cat(paths, on_error="return") if paths else {}  # concurrent on S3
                if any(isinstance(blobs.get(p), FileNotFoundError) for p in paths):
                    continue  # compacted meanwhile: its rows are in a newer checkpoint
            except FileNotFoundError:
                continue
            for name, level in live:
                blob = blobs.get(self._segment_path(name))
                log.segments.append((name, level, None if blob is None else _conform(pq.read_table(io.BytesIO(blob)))))
            tables = [table for _, _, table in log.segments if table is not None]
            for part in log.fresh:
                try:
                    blob = blobs[part]
                    if isinstance(blob, BaseException):
                        raise blob
                    tables.append(_conform(pq.read_table(io.BytesIO(blob))))
                except Exception as err:  # a zero-byte leftover, a foreign file, ...
                    warnings.warn(f"skipping unreadable progress part {part}: {err!r}", stacklevel=3)
            log.rows = pa.concat_tables(tables) if tables else PROGRESS_SCHEMA.empty_table()
            return log
        raise RuntimeError(f"{self.root}/progress changed under {_READ_RETRIES} reads in a row")

    def _segment_path(self, name: str) -> str:
        return self._path(f"progress/{name}")

    def _segment(self, name: str) -> pa.Table:
        return _conform(pq.read_table(io.BytesIO(self.fs.cat_file(self._segment_path(name)))))

    def progress(self) -> pa.Table:
        """All progress rows in write order: the newest checkpoint's segments', then the newer parts'."""
        return self._read_log().rows

    def compact(self, min_parts: int = 1) -> int:
        """Fold the part files into a new level-0 segment, merge full levels, and write a new
        checkpoint (see the module docstring); returns how many parts it folded (0: fewer
        than ``min_parts``, or another compactor won)."""
        log = self._read_log(segments=False)  # a segment is read only to be merged
        if len(log.fresh) < min_parts:
            return 0
        number = log.number + 1
        segments = [(name, level, table, False) for name, level, table in log.segments]
        segments.append((None, 0, log.rows, True))  # the fresh parts' rows
        while len(segments) >= FANOUT and len({level for _, level, _, _ in segments[-FANOUT:]}) == 1:
            try:
                tables = [table if table is not None else self._segment(name) for name, _, table, _ in segments[-FANOUT:]]
            except FileNotFoundError:
                return 0  # a newer compaction merged it: this one would lose the race for its checkpoint
            segments[-FANOUT:] = [(None, segments[-1][1] + 1, pa.concat_tables(tables), True)]
        written = []
        for i, (name, level, table, new) in enumerate(segments):
            if new:
                name = f"segment-{number:012d}-{uuid.uuid4().hex}.parquet"
                self._put(f"progress/{name}", _parquet_bytes(table))
                written.append(name)
                segments[i] = (name, level, table, new)
        # Parts an interrupted compaction failed to delete stay named until they are gone.
        named = sorted(log.held & {_name(p) for p in log.parts}) + [_name(p) for p in log.fresh]
        snapshot = json.dumps({"segments": [[name, level] for name, level, _, _ in segments], "parts": named}).encode()
        checkpoint = f"progress/checkpoint-{number:012d}.json"
        try:
            self._put(checkpoint, snapshot, create=True)
        except FileExistsError:
            # Ours if it holds our (uniquely named) segments: a write whose response was lost
            # and whose retry was refused. Otherwise another compactor wrote it first.
            if self._get(checkpoint) != snapshot:
                try:
                    self.remove([f"progress/{name}" for name in written])
                except FileNotFoundError:
                    pass  # a later compaction already deleted them as unnamed
                return 0
        live, named = {name for name, _, _, _ in segments}, set(named)
        self.fs.rm([p for p in log.parts if _name(p) in named] + [path for _, path in log.checkpoints]
                   + [p for p in log.segment_files if _name(p) not in live and _segment_number(p) < number])
        return len(log.fresh)

    def latest(self, progress: pa.Table | None = None) -> dict[str, dict]:
        """Per id, the row of its latest attempt (by finished_at; a tie goes to the later
        write): each unit's current state."""
        return {r["id"]: r for r in _latest_rows(self.progress() if progress is None else progress).to_pylist()}

    def committed(self) -> dict[str, ProgressRow]:
        """The latest row of every id whose latest row is 'done', by id."""
        return {i: ProgressRow.from_row(row) for i, row in self.latest().items() if row["status"] == "done"}

    # -- payload arrays -------------------------------------------------------------

    def put_arrays(self, key: str, **arrays: np.ndarray) -> tuple[str, str]:
        """Store ``arrays`` at ``payload/<key>.zip`` (one PUT); returns (its URI, the
        checksum of its bytes, for the commit row).

        Frame stacks (uint8 (T, H, W, 3)) are stored as one lossless PNG per frame, other
        arrays as deflated ``.npy``. The bytes depend only on the arrays (names sorted,
        fixed zip dates), so a retry overwrites a payload with identical bytes.
        """
        data = _payload_bytes(arrays)
        return self._put(_payload_rel(key), data), checksum(data)

    def get_arrays(self, key: str, expected: str | None = None) -> dict[str, np.ndarray]:
        """The arrays stored at ``key``. With ``expected`` (the checksum its commit
        recorded) PayloadError if the payload is gone or its bytes differ."""
        try:
            data = self._get(_payload_rel(key))
        except FileNotFoundError:
            if expected is None:
                raise
            raise PayloadError(f"payload {key}: missing ({self.uri(_payload_rel(key))})") from None
        if expected is not None and checksum(data) != expected:
            raise PayloadError(f"payload {key}: its {len(data)} bytes do not match the checksum its commit recorded")
        return _payload_arrays(data)

    def payload_bytes(self) -> int:
        """Total size of all payload files (what a run keeps besides its videos)."""
        folder = self._path("payload")
        self.fs.invalidate_cache(folder)
        try:
            return sum(info["size"] for info in self.fs.find(folder, detail=True).values())
        except FileNotFoundError:
            return 0

    # -- status ---------------------------------------------------------------------

    def status(self) -> dict:
        """Progress summary from the manifest alone (safe while a run is in flight).

        Keys: root, attempt, clips_{done,failed,pending}, videos_{done,failed,pending},
        frames_done, frames_pending, fps (None if unknown), eta_seconds (None if unknown),
        last_errors (up to 5 most recent current failures: id, uri, error).
        """
        info = self.run_info()
        attempt = len(info["attempts"]) if info else None
        plan = self._try_read("clips", ["id", "frames"])
        plan = pa.table({"id": pa.array([], pa.string()), "frames": pa.array([], pa.int64())}) if plan is None else plan
        plan = plan.rename_columns(["id", "plan_frames"])
        planned_videos = self._try_read("videos", ["video_id"])
        planned_videos = pa.array([], pa.string()) if planned_videos is None else planned_videos.column("video_id")
        # Vectorised (Arrow), on the columns it needs: a run of 10⁶ units answers in seconds.
        progress = self.progress().select(["id", "kind", "status", "attempt", "frames", "started_at", "finished_at",
                                           "uri", "error"])
        latest = _latest_rows(progress)
        is_video = pc.equal(latest["kind"], "video")
        units, video_rows = latest.filter(pc.invert(is_video)), latest.filter(is_video)
        clips = _counts(units, plan["id"])
        videos = _counts(video_rows, planned_videos)
        frames_done = _done_frames(units, plan)
        pending = plan.filter(pc.invert(pc.is_in(plan["id"], value_set=units["id"])))
        frames_pending = pc.sum(pending["plan_frames"]).as_py() or 0
        fps = _fps(progress.filter(pc.equal(progress["attempt"], attempt or 0)), plan)
        eta = 0.0 if frames_pending == 0 else (frames_pending / fps if fps else None)
        failed = latest.filter(pc.equal(latest["status"], "failed")).sort_by([("finished_at", "descending")])
        return {
            "root": self.root,
            "attempt": attempt,
            **{f"clips_{k}": v for k, v in clips.items()},
            **{f"videos_{k}": v for k, v in videos.items()},
            "frames_done": frames_done,
            "frames_pending": frames_pending,
            "fps": fps,
            "eta_seconds": eta,
            "last_errors": failed.slice(0, 5).select(["id", "uri", "error"]).to_pylist(),
        }

    def _try_read(self, name: str, columns: list[str]) -> pa.Table | None:
        try:
            return self.read_table(name, columns)
        except FileNotFoundError:  # not planned yet
            return None


def format_status(status: dict) -> str:
    """A short human-readable summary of ``Manifest.status()`` for ``raywarp status DST``."""
    if status["attempt"] is None:
        return f"{status['root']}: no run recorded"
    rate = f"{status['fps']:.1f} frames/s" if status["fps"] else "rate unknown"
    eta = format_seconds(status["eta_seconds"]) if status["eta_seconds"] is not None else "unknown"
    lines = [
        f"{status['root']} (attempt {status['attempt']})",
        f"clips:  {status['clips_done']} done, {status['clips_failed']} failed, {status['clips_pending']} pending",
        f"videos: {status['videos_done']} done, {status['videos_failed']} failed, {status['videos_pending']} pending",
        f"frames: {status['frames_done']} done, {status['frames_pending']} pending; {rate}; ETA {eta}",
    ]
    if status["last_errors"]:
        lines.append("last errors:")
        for e in status["last_errors"]:
            first_line = (e["error"] or "").strip().splitlines()[:1] or [""]
            lines.append(f"  {e['id']} ({e['uri']}): {first_line[0][:200]}")
    return "\n".join(lines)


# -- helpers ------------------------------------------------------------------------


def _config_diff(old, new, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> (old, new) for every differing leaf; '<absent>' for a missing key."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return {} if old == new else {prefix or "<config>": (old, new)}
    diff = {}
    for k in sorted(set(old) | set(new), key=str):
        key = f"{prefix}.{k}" if prefix else str(k)
        diff.update(_config_diff(old.get(k, "<absent>"), new.get(k, "<absent>"), key))
    return diff


def commit_name() -> str:
    """A fresh commit name, in time order (part files sort by it)."""
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex}"


def _segment_number(path: str) -> int:
    """The number of the compaction that wrote a segment file."""
    return int(_name(path).split("-")[1])


def _conform(table: pa.Table) -> pa.Table:
    """A progress table in PROGRESS_SCHEMA; columns a file predates come back null."""
    for column in PROGRESS_SCHEMA:
        if column.name not in table.column_names:
            table = table.append_column(column.name, pa.nulls(table.num_rows, column.type))
    return table.select(PROGRESS_SCHEMA.names).cast(PROGRESS_SCHEMA)


def _payload_rel(key: str) -> str:
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad payload key {key!r}: need non-empty '/'-separated names, no '.' or '..'")
    return f"payload/{key}.zip"


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _is_frames(a: np.ndarray) -> bool:
    return a.dtype == np.uint8 and a.ndim == 4 and a.shape[-1] == 3 and a.shape[0] > 0


def _payload_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A zip whose bytes depend on the arrays only: frame stacks as ``name/000000.png``…
    (RGB, lossless), other arrays as deflated ``name.npy``, names sorted, fixed dates."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(arrays):
            a = np.asarray(arrays[name])
            if _is_frames(a):  # PNG already deflates: store it as is
                for i, frame in enumerate(a):
                    ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), _PNG_LEVEL)
                    zf.writestr(zipfile.ZipInfo(f"{name}/{i:06d}.png", date_time=_ZIP_DATE), png.tobytes())
                continue
            member = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            member.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(member, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)
    return buf.getvalue()


def _payload_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a payload written by `_payload_bytes`."""
    out, frames = {}, {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            if name.endswith(".png"):
                stack = frames.setdefault(name.rsplit("/", 1)[0], [])
                png = np.frombuffer(zf.read(name), np.uint8)
                stack.append(cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
            else:
                with zf.open(name) as f:
                    out[name[: -len(".npy")]] = np.lib.format.read_array(f, allow_pickle=False)
    return {**out, **{name: np.stack(stack) for name, stack in frames.items()}}


def _latest_rows(progress: pa.Table) -> pa.Table:
    """The latest row of every id (by finished_at; a tie goes to the later write), in id order."""
    if progress.num_rows == 0:
        return progress
    # Sorted on the keys alone, then one take: the rows' other columns move once.
    keys = pa.table({"id": progress["id"], "finished_at": progress["finished_at"],
                     "order": pa.array(np.arange(progress.num_rows))})
    order = pc.sort_indices(keys, sort_keys=[("id", "ascending"), ("finished_at", "ascending"), ("order", "ascending")])
    ids = progress["id"].take(order)
    last = pc.not_equal(ids.slice(0, len(ids) - 1), ids.slice(1))  # the last row of every id
    keep = pa.concat_arrays([c for c in last.chunks] + [pa.array([True])])
    return progress.take(order.filter(keep))


def _done_frames(rows: pa.Table, plan: pa.Table) -> int:
    """Frames of the done unit rows among `rows`: a row's own, or the plan's where it has
    none (plan: id, plan_frames; joined for those rows only)."""
    done = rows.filter(pc.and_(pc.not_equal(rows["kind"], "video"), pc.equal(rows["status"], "done")))
    own = pc.sum(done["frames"]).as_py() or 0
    missing = done.filter(pc.is_null(done["frames"])).select(["id"])
    if missing.num_rows == 0:
        return own
    return own + (pc.sum(missing.join(plan, keys="id")["plan_frames"]).as_py() or 0)


def _counts(rows: pa.Table, planned: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """Ids by the status of their latest row (`rows`), planned ids without a row pending."""
    return {"done": pc.sum(pc.equal(rows["status"], "done")).as_py() or 0,
            "failed": pc.sum(pc.equal(rows["status"], "failed")).as_py() or 0,
            "pending": pc.sum(pc.invert(pc.is_in(planned, value_set=rows["id"]))).as_py() or 0}


def _fps(rows: pa.Table, plan: pa.Table) -> float | None:
    """Frames of done unit rows / wall span (first start to last finish) of ``rows``."""
    frames = _done_frames(rows, plan)
    start = pc.min(rows["started_at"]).as_py()
    if not frames or start is None:
        return None
    span = pc.max(rows["finished_at"]).as_py() - start
    return frames / span if span > 0 else None
