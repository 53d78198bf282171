"""raywarp.pipeline.manifest: run config, progress commits, status, payload arrays.

Every test runs twice: on a local directory and on S3 (moto's server, via the
``s3_bucket`` fixture), since the commit protocol exists for S3's sake.
"""

import dataclasses
import io
import time
import zipfile

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from raywarp.pipeline.manifest import (
    PROGRESS_SCHEMA,
    ConfigMismatchError,
    Manifest,
    PayloadError,
    commit_name,
    format_status,
)
from raywarp.pipeline.records import ProgressRow

CONFIG = {"model": "prior-v1", "steps": 20, "flow": {"iters": 12, "scale": 0.5}}


@pytest.fixture
def manifest(dst):
    return Manifest(*dst)


def row(id, status, finished_at, attempt=1, kind="clip", **extra):
    return ProgressRow(id=id, kind=kind, status=status, attempt=attempt, finished_at=finished_at, **extra)


def test_start_run_writes_config_and_counts_attempts(dst):
    assert Manifest(*dst).run_info() is None
    assert Manifest(*dst).start_run(CONFIG, "h1") == 1
    assert Manifest(*dst).start_run(CONFIG, "h1") == 2  # a resume, as from a new process

    info = Manifest(*dst).run_info()
    assert info["config"] == CONFIG and info["config_hash"] == "h1"
    assert len(info["attempts"]) == 2 and info["attempts"][0] <= info["attempts"][1]
    assert info["created_at"] == info["attempts"][0]


def test_config_mismatch_names_hashes_and_changed_keys(manifest):
    manifest.start_run(CONFIG, "h1")
    changed = {**CONFIG, "steps": 50, "flow": {"iters": 12, "scale": 1.0}}
    with pytest.raises(ConfigMismatchError) as err:
        manifest.start_run(changed, "h2")
    msg = str(err.value)
    for needle in ("h1", "h2", "steps: 20 -> 50", "flow.scale: 0.5 -> 1.0", "--out", manifest.root):
        assert needle in msg
    assert "model" not in msg  # unchanged keys are not listed
    assert len(manifest.run_info()["attempts"]) == 1  # the refused start left no trace


def test_latest_picks_newest_row_per_id(manifest):
    assert manifest.progress().schema == PROGRESS_SCHEMA and manifest.latest() == {}
    manifest.append_progress([row("a", "failed", 10.0, error="oom"), row("b", "done", 10.0)])
    uri = manifest.append_progress([row("a", "done", 20.0, attempt=2), row("b", "failed", 20.0, attempt=2)])
    assert uri.startswith(manifest.root + "/progress/part-") and uri.endswith(".parquet")

    manifest.append_progress([row("a", "failed", 15.0)])  # a straggler: written last, finished earlier

    latest = manifest.latest()
    assert {i: r["status"] for i, r in latest.items()} == {"a": "done", "b": "failed"}
    assert latest["a"]["attempt"] == 2 and latest["a"]["error"] is None  # missing field -> null
    assert set(manifest.committed()) == {"a"} and manifest.committed()["a"].attempt == 2
    assert manifest.progress().num_rows == 5


def test_progress_rejects_unknown_and_missing_fields(manifest):
    with pytest.raises(TypeError, match="finshed_at"):
        row("a", "done", 1.0, finshed_at=2.0)
    with pytest.raises(TypeError, match="finished_at"):
        ProgressRow(id="a", kind="clip", status="done", attempt=1)
    with pytest.raises(ValueError, match="status"):
        row("a", "ok", 1.0)
    with pytest.raises(TypeError, match="ProgressRow"):
        manifest.append_progress([{"id": "a", "kind": "clip", "status": "done", "attempt": 1, "finished_at": 1.0}])
    assert manifest.progress().num_rows == 0  # nothing half-written


def test_progress_sees_parts_written_by_another_process(dst, manifest):
    """s3fs caches listings; parts written by other processes must still show up."""
    part = manifest.append_progress([row("a", "done", 1.0)])
    assert manifest.progress().num_rows == 1  # fills the listing cache
    other_fs, path = fsspec.core.url_to_fs(part, skip_instance_cache=True, **(dst[1] or {}))
    other_fs.pipe_file(path.replace("/part-", "/part-z"), other_fs.cat_file(path))
    assert manifest.progress().num_rows == 2


def test_zero_byte_part_is_skipped_with_warning(manifest):
    manifest.append_progress([row("a", "done", 1.0)])
    manifest.fs.pipe_file(f"{manifest._path('progress')}/part-0-leftover.parquet", b"")
    with pytest.warns(UserWarning, match="part-0-leftover"):
        table = manifest.progress()
    assert table.column("id").to_pylist() == ["a"]


def test_status_on_a_hand_made_plan(manifest):
    manifest.start_run(CONFIG, "h")
    manifest.write_table("videos", [{"video_id": v, "uri": f"src/{v}.mp4"} for v in ("v1", "v2", "v3")])
    plan = {"v1-c0": 10, "v1-c1": 10, "v2-c0": 20, "v3-c0": 30, "v3-c1": 5}
    manifest.write_table("clips", [{"id": i, "video_id": i[:2], "frames": f} for i, f in plan.items()],
                         schema=pa.schema([("id", pa.string()), ("video_id", pa.string()), ("frames", pa.int32())]))
    assert manifest.read_table("clips").column("frames").to_pylist() == list(plan.values())

    manifest.append_progress([
        row("v1-c0", "done", 2.0, frames=10, started_at=1.0),
        row("v1-c1", "failed", 3.0, started_at=1.0, uri="src/v1.mp4", error="old failure"),
    ])
    assert manifest.start_run(CONFIG, "h") == 2
    manifest.append_progress([
        row("v1-c1", "done", 104.0, attempt=2, frames=10, started_at=100.0),
        row("v2-c0", "failed", 103.0, attempt=2, started_at=100.0, uri="src/v2.mp4", error="CUDA OOM\ntrace"),
    ])
    manifest.append_progress([
        row("v1", "done", 105.0, attempt=2, kind="video", video_id="v1", started_at=104.0),
        row("v2", "failed", 104.5, attempt=2, kind="video", video_id="v2", uri="src/v2.mp4", error="missing clips"),
    ])

    s = manifest.status()
    assert s["attempt"] == 2
    assert (s["clips_done"], s["clips_failed"], s["clips_pending"]) == (2, 1, 2)
    assert (s["videos_done"], s["videos_failed"], s["videos_pending"]) == (1, 1, 1)
    assert (s["frames_done"], s["frames_pending"]) == (20, 35)
    assert s["fps"] == pytest.approx(10 / 5)  # attempt 2: 10 frames from t=100 to t=105
    assert s["eta_seconds"] == pytest.approx(35 / 2)
    # v1-c1's old failure was superseded; newest first.
    assert s["last_errors"] == [
        {"id": "v2", "uri": "src/v2.mp4", "error": "missing clips"},
        {"id": "v2-c0", "uri": "src/v2.mp4", "error": "CUDA OOM\ntrace"},
    ]
    text = format_status(s)
    assert "attempt 2" in text and "2 done, 1 failed, 2 pending" in text and "ETA 18s" in text
    assert "v2-c0 (src/v2.mp4): CUDA OOM" in text and "trace" not in text


def test_status_before_anything_is_written(manifest):
    s = manifest.status()
    assert s["attempt"] is None and s["clips_pending"] == 0 and s["fps"] is None
    assert "no run recorded" in format_status(s)


def test_arrays_round_trip_and_deterministic_bytes(manifest, monkeypatch):
    frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    tracks = np.linspace(0, 1, 10, dtype=np.float32).reshape(5, 2)
    uri, sha = manifest.put_arrays("v1/c0", frames=frames, tracks=tracks)
    assert uri == manifest.root + "/payload/v1/c0.zip"

    got = manifest.get_arrays("v1/c0", sha)
    assert set(got) == {"frames", "tracks"}
    np.testing.assert_array_equal(got["frames"], frames)
    assert got["tracks"].dtype == np.float32 and np.array_equal(got["tracks"], tracks)

    # A retry much later (zip dates would differ), arguments in another order: same bytes.
    first = manifest.fs.cat_file(manifest._path("payload/v1/c0.zip"))
    real_localtime = time.localtime
    monkeypatch.setattr(time, "localtime", lambda t=None: real_localtime(time.time() + 400 * 86400))
    assert manifest.put_arrays("v1/c0", tracks=tracks.copy(), frames=frames.copy())[1] == sha
    assert manifest.fs.cat_file(manifest._path("payload/v1/c0.zip")) == first
    assert zipfile.ZipFile(io.BytesIO(first)).testzip() is None

    with pytest.raises(ValueError):
        manifest.put_arrays("../escape", frames=frames)


DAMAGE = {  # how a payload goes bad in storage → what the error says
    "bit flip": (lambda data: data[:100] + bytes([data[100] ^ 0x01]) + data[101:], "do not match the checksum"),
    "truncated": (lambda data: data[: len(data) // 2], "do not match the checksum"),
    "deleted": (None, "missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_payload_is_refused_on_read(manifest, damage):
    frames = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    _, sha = manifest.put_arrays("u1", frames=frames)
    path = manifest._path("payload/u1.zip")
    change, said = DAMAGE[damage]
    if change is None:
        manifest.fs.rm(path)
    else:
        manifest.fs.pipe_file(path, change(manifest.fs.cat_file(path)))
    with pytest.raises(PayloadError, match=said):
        manifest.get_arrays("u1", sha)


def test_a_named_commit_is_made_once(manifest):
    """A retried task commits under the same name: the row is there once."""
    name = commit_name()
    row = ProgressRow(id="u1", kind="clip", status="done", attempt=1, finished_at=1.0, checksums={"u1": "ab"})
    first = manifest.append_progress([row], name=name)
    assert manifest.append_progress([dataclasses.replace(row, finished_at=2.0)], name=name) == first
    rows = manifest.progress().to_pylist()
    assert len(rows) == 1 and rows[0]["finished_at"] == 1.0 and rows[0]["checksums"] == '{"u1": "ab"}'


def test_frames_are_stored_losslessly_and_compressed(manifest):
    """Frame stacks go in as PNG: exact round trip, fewer bytes than raw for real images."""
    from raywarp import synthetic

    video, _ = synthetic.affine_video("coffee", 4, (48, 64), synthetic.affine_motion((48, 64), shift=(1.0, 0.0)))
    frames = (video * 255).round().byte().permute(0, 2, 3, 1).numpy()
    manifest.put_arrays("u", frames=frames, end_map=np.zeros((2, 12, 16), np.float32))
    got = manifest.get_arrays("u")
    np.testing.assert_array_equal(got["frames"], frames)
    assert got["end_map"].shape == (2, 12, 16)
    assert manifest.payload_bytes() < frames.nbytes


# -- the compacted progress log ------------------------------------------------------


def commits(manifest, count, rows_each=1, start=0):
    """`count` commits of `rows_each` rows, ids u<start>…, one finished second each."""
    for c in range(start, start + count):
        manifest.append_progress([row(f"u{c * rows_each + r:06d}", "done", float(c), frames=1, started_at=float(c))
                                  for r in range(rows_each)])


def progress_files(manifest):
    return sorted(p.rsplit("/", 1)[-1] for p in manifest.fs.ls(manifest._path("progress"), detail=False))


def count_reads(manifest, monkeypatch) -> list:
    """Paths the manifest reads from here on (cat_file and batched cat)."""
    seen = []
    cat_file, cat = manifest.fs.cat_file, manifest.fs.cat
    monkeypatch.setattr(manifest.fs, "cat_file", lambda path, *a, **k: seen.append(path) or cat_file(path, *a, **k))
    monkeypatch.setattr(manifest.fs, "cat", lambda paths, *a, **k: seen.extend(paths) or cat(paths, *a, **k))
    return seen


def test_compaction_keeps_every_row_and_bounds_the_reads(manifest, monkeypatch):
    commits(manifest, 12)
    manifest.append_progress([row("u000003", "failed", 99.0, error="a later failure")])
    before = manifest.progress().to_pylist()
    assert manifest.compact() == 13
    assert [f.split("-")[0] for f in progress_files(manifest)] == ["checkpoint", "segment"]
    assert manifest.progress().to_pylist() == before  # same rows, same order
    assert manifest.latest()["u000003"]["status"] == "failed"
    commits(manifest, 3, start=100)
    reads = count_reads(manifest, monkeypatch)
    assert manifest.progress().num_rows == 16
    assert len(set(reads)) == 1 + 1 + 3  # the checkpoint, its segment and the newer parts
    assert manifest.compact() == 3 and manifest.compact() == 0
    assert manifest.progress().num_rows == 16


@pytest.mark.parametrize("deleted", [0, 5])
def test_interrupted_compaction_loses_and_repeats_no_row(manifest, monkeypatch, deleted):
    """Killed after writing the checkpoint, before or while deleting the parts it holds."""
    commits(manifest, 10)
    rm = manifest.fs.rm

    def dies_while_deleting(paths, *args, **kwargs):
        if deleted:
            rm(sorted(paths)[:deleted])
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(manifest.fs, "rm", dies_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        manifest.compact()
    monkeypatch.setattr(manifest.fs, "rm", rm)
    assert len([f for f in progress_files(manifest) if f.startswith("part-")]) == 10 - deleted  # leftovers
    ids = manifest.progress().column("id").to_pylist()
    assert sorted(ids) == [f"u{i:06d}" for i in range(10)]  # each row once
    commits(manifest, 2, start=10)
    assert manifest.compact() == 2  # folds the new parts, deletes the leftovers
    assert [f.split("-")[0] for f in progress_files(manifest)] == ["checkpoint", "segment", "segment"]
    assert sorted(manifest.progress().column("id").to_pylist()) == [f"u{i:06d}" for i in range(12)]


def test_racing_compactors_write_one_checkpoint(manifest, monkeypatch):
    commits(manifest, 4)
    real_put = manifest._put

    def other_compactor_first(rel, data, create=False):
        if create:  # the other compactor wins the race for this checkpoint
            Manifest(manifest.dst, manifest.storage_options or None).compact()
        return real_put(rel, data, create)

    monkeypatch.setattr(manifest, "_put", other_compactor_first)
    assert manifest.compact() == 0
    assert sorted(manifest.progress().column("id").to_pylist()) == [f"u{i:06d}" for i in range(4)]


def test_reader_whose_listing_went_stale_reads_again(manifest, monkeypatch):
    commits(manifest, 6)
    other = Manifest(manifest.dst, manifest.storage_options or None)
    cat = manifest.fs.cat
    calls = []

    def compacted_meanwhile(paths, *args, **kwargs):
        calls.append(paths)
        if len(calls) == 1:
            other.compact()  # deletes the parts this reader has just listed (same fs object)
        return cat(paths, *args, **kwargs)

    monkeypatch.setattr(manifest.fs, "cat", compacted_meanwhile)
    assert manifest.progress().num_rows == 6
    assert len(calls) >= 2  # the first read found its parts gone and listed again


@pytest.mark.slow
def test_twenty_thousand_rows_status_in_a_bounded_read(tmp_path, monkeypatch, capsys):
    """20,000 rows in 2,000 commits with the driver's periodic compaction, one compaction
    interrupted: nothing lost, and `raywarp status` reads a bounded number of files."""
    from raywarp.cli import main as cli_main
    from raywarp.pipeline.manifest import COMPACT_EVERY

    manifest = Manifest(str(tmp_path / "out"))
    manifest.start_run(CONFIG, "h")
    rm = manifest.fs.rm
    for batch in range(2_000 // COMPACT_EVERY + 1):
        commits(manifest, min(COMPACT_EVERY, 2_000 - batch * COMPACT_EVERY), rows_each=10, start=batch * COMPACT_EVERY)
        if batch == 4:  # killed mid-delete
            monkeypatch.setattr(manifest.fs, "rm", lambda paths, *a, **k: (rm(sorted(paths)[:7]), 1 / 0))
            with pytest.raises(ZeroDivisionError):
                manifest.compact(COMPACT_EVERY)
            monkeypatch.setattr(manifest.fs, "rm", rm)
        else:
            manifest.compact(COMPACT_EVERY)
    reader = Manifest(str(tmp_path / "out"))
    reads = count_reads(reader, monkeypatch)
    started = time.perf_counter()
    status = reader.status()
    seconds = time.perf_counter() - started
    print(f"status over 20,000 rows in 2,000 commits: {seconds:.2f} s, {len(set(reads))} files read")
    assert status["clips_done"] == 20_000 and status["frames_done"] == 20_000
    assert len({r for r in reads if "/progress/" in r}) <= COMPACT_EVERY + 1
    assert cli_main(["status", str(tmp_path / "out")]) == 0
    assert "20000 done, 0 failed, 0 pending" in capsys.readouterr().out


@pytest.mark.slow
def test_twenty_thousand_rows_on_s3(s3_bucket, monkeypatch):
    """The same on the S3 server: 20,000 rows in 500 commits, compacted as the driver
    does, one compaction interrupted between its checkpoint and its deletes."""
    bucket, options = s3_bucket
    manifest = Manifest(f"s3://{bucket}/out", options)
    rm = manifest.fs.rm
    for batch in range(4):
        commits(manifest, 125, rows_each=40, start=batch * 125)
        if batch == 2:
            monkeypatch.setattr(manifest.fs, "rm", lambda *a, **k: 1 / 0)
            with pytest.raises(ZeroDivisionError):
                manifest.compact()
            monkeypatch.setattr(manifest.fs, "rm", rm)
        else:
            manifest.compact()
    reader = Manifest(f"s3://{bucket}/out", options)
    reads = count_reads(reader, monkeypatch)
    started = time.perf_counter()
    latest = reader.latest()
    print(f"S3: latest of 20,000 rows in {time.perf_counter() - started:.2f} s, {len(reads)} files read")
    assert len(latest) == 20_000 and reader.progress().num_rows == 20_000
    # the checkpoint and its 4 segments; the leftovers were deleted by the next compaction
    assert len(set(reads)) == 1 + 4


def test_a_log_of_the_single_checkpoint_format_is_refused_by_name(manifest):
    """Before tiered compaction a checkpoint was one parquet file of every row."""
    manifest.start_run(CONFIG, "h")
    manifest.write_bytes("progress/checkpoint-000000000001.parquet", b"old")
    with pytest.raises(ValueError, match="checkpoint-000000000001.parquet: a progress log written by a raywarp before"):
        manifest.status()


def test_a_checkpoint_written_whose_answer_was_lost_is_kept(manifest, monkeypatch):
    """S3 wrote the checkpoint, the answer was lost, and the retry was refused (412): the
    checkpoint is this compactor's own, so its segments must stay."""
    commits(manifest, 5)
    real_put = manifest._put

    def answer_lost(rel, data, create=False):
        real_put(rel, data, create)
        if create:
            raise FileExistsError(rel)  # what the retry of a create that succeeded answers
        return manifest.uri(rel)

    monkeypatch.setattr(manifest, "_put", answer_lost)
    assert manifest.compact() == 5
    monkeypatch.setattr(manifest, "_put", real_put)
    assert sorted(manifest.progress().column("id").to_pylist()) == [f"u{i:06d}" for i in range(5)]
