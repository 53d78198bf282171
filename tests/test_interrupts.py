"""Ctrl-C and SIGTERM on the driver: the run stops within seconds, its embedded Ray goes
with it (no process left behind), it says in one line how to resume, exits non-zero,
and the resumed run recomputes nothing that was committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raywarp.pipeline.manifest import Manifest
from test_pipeline import ROOT, write_video

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


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_signal_stops_the_run_cleanly_and_the_rerun_resumes(how, tiny_model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "a.mp4", "coffee", 19, (16, 16), shift=(1.0, 0.0))
    dst = tmp_path / "out"
    command = [sys.executable, "-m", "raywarp.cli", "run", str(src), "--out", str(dst), "--task", "sr", "--model",
               tiny_model, "--mode", "warped", "--clip-len", "7", "--overlap", "2", "--steps", "4", "--max-actors", "1"]
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    manifest = Manifest(str(dst))
    deadline = time.time() + 300
    while time.time() < deadline and not manifest.committed() and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    ray_processes = descendants(proc.pid)
    assert ray_processes, "the embedded Ray's processes should be the driver's children"
    signalled = time.time()
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: to the whole foreground group
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=STOP_SECONDS + 30)
    stopped = time.time() - signalled
    assert stopped < STOP_SECONDS, f"took {stopped:.1f} s to stop"
    assert proc.returncode == (130 if how == "ctrl-c" else 143), err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("raywarp run: interrupted" if how == "ctrl-c" else "raywarp run: terminated")
    assert "run the same command again to resume" in lines[-1] and "Traceback" not in err, err
    time.sleep(2)
    left = {pid for pid in ray_processes if alive(pid)}
    assert not left, f"processes left behind: {left}"

    committed = set(manifest.committed())
    assert committed
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    recomputed = {r["id"] for r in manifest.progress().to_pylist() if r["attempt"] == 2 and r["kind"] != "video"}
    assert not recomputed & committed
