"""`raywarp status --json | --watch` on manifests written by hand, as a run writes them (no Ray)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raywarp.cli import main as cli_main
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.records import ProgressRow

ROOT = Path(__file__).resolve().parent.parent
PLAN = {"v1-s0": 2, "v1-c0": 5, "v1-s1": 2}  # unit id → frames, one video
KEYS = ("root", "attempt", "clips_done", "clips_failed", "clips_pending", "videos_done", "videos_failed",
        "videos_pending", "frames_done", "frames_pending", "fps", "eta_seconds", "last_errors")


def row(id: str, status: str, kind: str = "clip", frames: int = 0) -> ProgressRow:
    now = time.time()
    return ProgressRow(id=id, video_id="v1", uri="src/v1.mp4", kind=kind, status=status, attempt=1, frames=frames,
                       started_at=now - 1, finished_at=now, error="" if status == "done" else "boom")


def plan(manifest: Manifest) -> None:
    manifest.write_table("videos", [{"video_id": "v1", "uri": "src/v1.mp4"}])
    manifest.write_table("clips", [{"id": i, "video_id": "v1", "frames": f} for i, f in PLAN.items()])


def started(dst: Path) -> Manifest:
    manifest = Manifest(str(dst))
    manifest.start_run({"model": "m"}, "h")
    return manifest


def test_json_is_the_manifest_status_with_the_documented_keys(tmp_path, capsys):
    manifest = started(tmp_path)
    plan(manifest)
    manifest.append_progress([row("v1-s0", "done", "seam", 2), row("v1-c0", "failed")])
    assert cli_main(["status", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    status = json.loads(out)
    assert status == json.loads(json.dumps(manifest.status()))
    assert sorted(status) == sorted(KEYS), "scripts read these keys: change them only on purpose"
    assert (status["clips_done"], status["clips_failed"], status["clips_pending"], status["frames_done"]) == (1, 1, 1, 2)

    with pytest.raises(SystemExit):
        cli_main(["status", "--help"])
    help_text = capsys.readouterr().out
    assert all(key in help_text for key in status), "every key is documented in `raywarp status --help`"


def test_watch_waits_for_the_plan_and_ends_with_the_last_commit(tmp_path, capsys):
    manifest = started(tmp_path)  # the driver is still probing: nothing planned, nothing pending yet

    def run():
        time.sleep(0.5)
        plan(manifest)
        for unit_id, frames in PLAN.items():
            time.sleep(0.2)
            manifest.append_progress([row(unit_id, "done", "seam" if "-s" in unit_id else "clip", frames)])
        manifest.append_progress([row("v1", "done", "video", sum(PLAN.values()))])

    writer = threading.Thread(target=run)
    writer.start()
    try:
        assert cli_main(["status", str(tmp_path), "--json", "--watch", "0.1"]) == 0
    finally:
        writer.join()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["videos_pending"] == 0 and lines[0]["clips_pending"] == 0  # before the plan: not finished
    assert any(s["clips_pending"] for s in lines)
    assert (lines[-1]["clips_done"], lines[-1]["videos_done"], lines[-1]["frames_done"]) == (3, 1, 9)
    assert [s for s in lines if not s["clips_pending"] and not s["videos_pending"] and s["videos_done"]] == lines[-1:]


def test_watch_of_a_finished_run_with_failures_exits_1_at_once(tmp_path, capsys):
    manifest = started(tmp_path)
    plan(manifest)
    manifest.append_progress([row("v1-s0", "done", "seam", 2), row("v1-c0", "failed"), row("v1-s1", "done", "seam", 2),
                              row("v1", "failed", "video")])
    assert cli_main(["status", str(tmp_path), "--watch", "30"]) == 1
    out = capsys.readouterr().out
    assert out.count("(attempt 1)") == 1 and "1 failed" in out


def test_ctrl_c_ends_the_watch_with_130_and_one_line(tmp_path):
    manifest = started(tmp_path)
    plan(manifest)  # never finishes
    watch = subprocess.Popen([sys.executable, "-m", "raywarp.cli", "status", str(tmp_path), "--json", "--watch", "0.2"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(watch.stdout.readline())["clips_pending"] == 3  # watching
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 130
    assert err == "raywarp status: interrupted\n"
