"""Manifest benchmark: what the progress log costs as a run grows, without Ray.

    python -m raywarp.bench.manifest [--rows 1000000] [--rows-per-commit 10] [--dst DIR]

Appends `--rows` progress rows to a local manifest in commits of `--rows-per-commit`,
compacting every `COMPACT_EVERY` commits as the driver does (`raywarp.pipeline.manifest`).
Reports the bytes compaction wrote (segments and checkpoints) against the final log's
bytes, the files a reader then reads, and the seconds `status()` (what `raywarp status`
prints) and `committed()` (what a resumed run reads before it samples) take.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

from raywarp.pipeline.manifest import COMPACT_EVERY, Manifest
from raywarp.pipeline.records import ProgressRow


def _row(i: int) -> ProgressRow:
    """A unit's 'done' row with what a real one carries (ids, URIs, timings, checksums, metrics)."""
    unit, video = f"{i:08x}" * 4, f"v{i // 100:06d}"
    return ProgressRow(id=unit, kind="clip", status="done", attempt=1, finished_at=1.8e9 + i, video_id=video,
                       uri=f"s3://archive/videos/{video}.mp4", node="ip-10-0-0-1", frames=16, started_at=1.8e9 + i - 9,
                       seconds_decode=0.4, seconds_flow=1.2, seconds_sample=6.5, seconds_write=0.3,
                       metrics={"measurement_error": 0.0021, "fallback_pairs": []},
                       output=f"s3://archive/restored/_raywarp/payload/{unit}.zip",
                       checksums={unit: f"{i:064x}", f"endmap/{unit}": f"{i + 1:064x}"})


def simulate(dst: str, rows: int, rows_per_commit: int) -> dict:
    manifest = Manifest(dst)
    manifest.start_run({"bench": "manifest"}, "bench")
    written = {"bytes": 0}
    put = manifest._put

    def counted(rel, data, create=False):  # compaction's writes are segments and checkpoints
        if not rel.startswith("progress/part-"):
            written["bytes"] += len(data)
        return put(rel, data, create)

    manifest._put = counted
    started, commits = time.perf_counter(), 0
    for first in range(0, rows, rows_per_commit):
        manifest.append_progress([_row(i) for i in range(first, min(rows, first + rows_per_commit))])
        commits += 1
        if commits % COMPACT_EVERY == 0:
            manifest.compact(COMPACT_EVERY)
    manifest.compact()
    seconds_writing = time.perf_counter() - started
    files = [p for p in manifest.fs.ls(manifest._path("progress"), detail=True)]
    final = sum(f["size"] for f in files)
    reader = Manifest(dst)
    started = time.perf_counter()
    status = reader.status()
    seconds_status = time.perf_counter() - started
    started = time.perf_counter()
    committed = reader.committed()
    seconds_committed = time.perf_counter() - started
    assert status["clips_done"] == len(committed) == rows, (status["clips_done"], len(committed), rows)
    return {"rows": rows, "rows/commit": rows_per_commit, "commits": commits, "written MB": written["bytes"] / 1e6,
            "final MB": final / 1e6, "written × final": written["bytes"] / final, "files": len(files),
            "run s": seconds_writing, "status s": seconds_status, "resume read s": seconds_committed}


def format_table(rows: list[dict]) -> str:
    lines = ["| rows | rows per commit | commits | compaction wrote MB | final log MB | wrote × final | files read | "
             "append + compact s | status s | resume read s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rows']:,} | {r['rows/commit']} | {r['commits']:,} | {r['written MB']:.1f} | {r['final MB']:.1f} "
                     f"| {r['written × final']:.1f} | {r['files']} | {r['run s']:.0f} | {r['status s']:.2f} "
                     f"| {r['resume read s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--rows-per-commit", type=int, default=10)
    p.add_argument("--dst", help="manifest folder (default: a temporary directory)")
    args = p.parse_args(argv)
    print(f"manifest benchmark: {platform.processor() or platform.machine()}, compaction every {COMPACT_EVERY} commits")
    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory(dir=args.dst) as dst:
            results.append(simulate(dst, rows, args.rows_per_commit))
        print(format_table(results[-1:]), flush=True)
    return results


if __name__ == "__main__":
    main()
