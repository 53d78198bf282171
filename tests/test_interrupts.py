"""Ctrl-C, SIGTERM and SIGKILL on the driver: the run stops within seconds, its embedded
Ray goes with it (no process left behind), it says in one line how to resume and exits
non-zero (Ctrl-C, SIGTERM), and every resumed run recomputes nothing that was
committed; the output ends byte-identical to an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.run import run
from test_pipeline import ROOT, small_config, write_video

STOP_SECONDS = 20  # from the signal to the process gone, Ray shut down included


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_a_commit(proc: subprocess.Popen, manifest: Manifest, before: set[str]) -> None:
    """Until the run commits something not in `before` (it is then part way)."""
    deadline = time.time() + 300  # Ray's workers run at nice 15: other load on the machine starves them
    while time.time() < deadline and not set(manifest.committed()) - before and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    assert set(manifest.committed()) - before, "no commit before the deadline"


def stop(proc: subprocess.Popen, how: str) -> tuple[int, str]:
    """Signal the run as a user or a scheduler would; (exit code, stderr) once it is gone,
    its embedded Ray with it."""
    ray_processes = descendants(proc.pid)
    assert ray_processes, "the embedded Ray's processes should be the driver's children"
    signalled = time.time()
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: to the whole foreground group
    elif how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGKILL)  # the machine lost: nothing runs its cleanup
    _, err = proc.communicate(timeout=STOP_SECONDS + 30)
    stopped = time.time() - signalled
    assert stopped < STOP_SECONDS, f"took {stopped:.1f} s to stop"
    deadline = time.time() + 15  # after SIGKILL, Ray's processes follow their dead parent
    while {pid for pid in ray_processes if alive(pid)} and time.time() < deadline:
        time.sleep(0.5)
    left = {pid for pid in ray_processes if alive(pid)}
    assert not left, f"processes left behind: {left}"
    return proc.returncode, err


@pytest.mark.slow
def test_a_run_stopped_three_ways_resumes_each_time_and_ends_as_a_clean_run(tiny_model, tmp_path, local_ray):
    """Ctrl-C, then SIGTERM, then SIGKILL, each part way through a run: every stop takes
    seconds, leaves no process, says (for the first two) in one line how to resume; every
    rerun recomputes nothing committed before it; the last finishes the job, and its
    output is byte-identical to an uninterrupted run's."""
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "a.mp4", "coffee", 19, (16, 16), shift=(1.0, 0.0))  # 3 seams, 4 clips
    dst = tmp_path / "out"

    def command(out):
        return [sys.executable, "-m", "raywarp.cli", "run", str(src), "--out", str(out), "--task", "sr", "--model",
                tiny_model, "--mode", "warped", "--clip-len", "7", "--overlap", "2", "--steps", "4", "--max-actors", "1"]

    manifest = Manifest(str(dst))
    committed_before = {}  # attempt → what was committed when it started
    for attempt, how, code, said in [(1, "ctrl-c", 130, "raywarp run: interrupted"),
                                     (2, "sigterm", 143, "raywarp run: terminated"),
                                     (3, "sigkill", -signal.SIGKILL, None)]:
        committed_before[attempt] = set(manifest.committed())
        proc = start(command(dst))
        wait_for_a_commit(proc, manifest, committed_before[attempt])
        returncode, err = stop(proc, how)
        assert returncode == code, err
        if said:
            last = err.strip().splitlines()[-1]
            assert last.startswith(said) and "run the same command again to resume" in last, err
            assert "Traceback" not in err, err

    committed_before[4] = set(manifest.committed())
    done = subprocess.run(command(dst), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = manifest.progress().to_pylist()
    for attempt, before in committed_before.items():
        recomputed = {r["id"] for r in rows if r["attempt"] == attempt and r["kind"] != "video"} & before
        assert not recomputed, (attempt, recomputed)
    plan = {u["id"] for u in manifest.read_table("clips").to_pylist()}
    assert len(plan) == 7 and plan <= set(manifest.committed())
    assert done.stderr.strip().splitlines()[-1].startswith("progress: videos 1/1, units 7/7, frames 19/19;")
    logs = done.stdout.splitlines()[-1].removeprefix("Ray's logs: ")
    assert Path(logs).is_dir() and any(Path(logs).glob("raylet*")), done.stdout

    clean = tmp_path / "clean"  # in this process, on the session's Ray: the same config as `command`'s
    assert run(str(src), str(clean), small_config(tiny_model, steps=4), quiet=True).ok
    assert (dst / "a.mp4").read_bytes() == (clean / "a.mp4").read_bytes()
