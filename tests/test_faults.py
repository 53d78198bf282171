"""The fault suite (issue 12, item 4): runs disturbed mid-flight, each checked against an
undisturbed run with the same resources (one worker actor, the same `actor_cpus`).

- a worker actor's process killed while it is inside `sample`, and while inside `flows`;
- transient S3 errors (503 SlowDown, connections reset before and after the store
  applied the request) from a fault-injecting proxy in front of the moto server;
- the driver (`raywarp run` in a subprocess, with its embedded Ray) killed while a
  video is being encoded, then the same command run again;
- a worker node removed mid-run from a `ray.cluster_utils.Cluster` and another added;
- two drivers started together on one output (one runs, the other is refused).

(A corrupted or deleted payload: tests/test_verified_payloads.py.)

Each asserts: every video done, or failed with a reason; every planned unit has a row;
no unit has two 'done' rows in one attempt; the output videos byte-identical to the
undisturbed run's. Each also checks that its fault really struck mid-flight (the
process killed was inside the method, the encoder was frozen before its video's row,
the proxy counted its faults).

Processes are found by Ray's process titles ('ray::UnitWorker.sample' while a worker is
inside `sample`) among the descendants of this test process (or of the driver it
started), never among another user's Ray processes on the same machine; everything
started here is stopped here, by pid.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import fsspec
import pytest
import ray
import s3fs

from faults import FaultProxy, descendants, find_process, kill_all, title, wait_gone
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.run import local_system_config, run
from test_pipeline import ROOT, small_config, write_video

pytestmark = pytest.mark.slow

STEPS = 4  # a unit samples for about a second on the 2-core machine
# Two videos: 'a' is 5 units (seams 5-7 and 10-12, three clips), 'b' one clip.
VIDEOS = {"a.mp4": ("coffee", 17, {"shift": (1.0, 0.0)}), "b.mp4": ("chelsea", 4, {"shift": (0.0, 1.0)})}
RUN_TIMEOUT = 420  # Ray's workers run at nice 15: other load on the machine starves them


def config(model: str) -> RunConfig:
    return small_config(model, steps=STEPS)  # one actor, actor_cpus 1


def cli_args(model: str) -> list[str]:
    """`raywarp run` options giving exactly `config(model)` (checked by its hash)."""
    return ["--task", "sr", "--scale", "4", "--model", model, "--mode", "warped", "--clip-len", "7", "--overlap", "2",
            "--steps", str(STEPS), "--max-actors", "1"]


class Rays:
    """This module's Ray: a local one (as conftest's `local_ray`), or none, so that a test
    can start a `Cluster` of its own."""

    def local(self) -> None:
        if not ray.is_initialized():
            # address="local": a new instance, never one a `ray start` elsewhere on the machine left recorded
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     _system_config=local_system_config(RunConfig(max_actors=1)))

    def down(self) -> None:
        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="module")
def rays():
    rays = Rays()
    rays.down()
    yield rays
    rays.down()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fault_src")
    for name, (photo, frames, motion) in VIDEOS.items():
        write_video(root / name, photo, frames, (16, 16), **motion)
    return root


@pytest.fixture(scope="module")
def reference(rays, src, tiny_model, tmp_path_factory) -> dict:
    """The undisturbed run: {'dst', 'hash', 'outputs': {name: bytes}}."""
    rays.local()
    dst = tmp_path_factory.mktemp("fault_reference")
    summary = run(str(src), str(dst), config(tiny_model), quiet=True)
    assert summary.ok, summary.format()
    return {"dst": dst, "hash": Manifest(str(dst)).run_info()["config_hash"],
            "outputs": {name: (dst / name).read_bytes() for name in VIDEOS}}


class Background:
    """`fn(*args, **kwargs)` in a thread (a driver to disturb from the test's thread)."""

    def __init__(self, fn, *args, **kwargs):
        self.result, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, fn, args, kwargs):
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in join()
            self.error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()

    def join(self, timeout: float = RUN_TIMEOUT):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the run did not finish in {timeout} s (hung?)"
        if self.error is not None:
            raise self.error
        return self.result


class ActorWatch:
    """Follows the worker actor's processes below `root` by their titles. `kill_in(method,
    nth)`: SIGKILL the actor's process when it enters `method` for the `nth` time."""

    def __init__(self, root: int):
        self.root = root
        self.pids: list[int] = []  # every UnitWorker process seen, in order
        # an earlier run's actor may still be exiting
        self.old = {pid for pid in descendants(root) if title(pid).startswith("ray::UnitWorker")}
        self.killed_title = ""
        self.after_kill: list[str] = []  # the methods the next process ran, in order

    def _actor(self, timeout: float, stop) -> int | None:
        pid = find_process(self.root, "ray::UnitWorker", timeout, poll=0.02, stop=stop,
                           exclude=self.old | set(self.pids))  # not the one killed: it may linger a moment
        if pid:
            self.pids.append(pid)
        return pid

    def kill_in(self, method: str, nth: int, stop, action=None) -> bool:
        """SIGKILL the actor's process (or call `action(pid)`) as it enters `method` for
        the nth time; False if the run ended first."""
        pid = self._actor(RUN_TIMEOUT, stop)
        entered, last = 0, ""
        while pid and not stop():
            now = title(pid)
            if now == f"ray::UnitWorker.{method}" and last != now:
                entered += 1
                if entered == nth:
                    self.killed_title = title(pid)
                    (action or (lambda p: os.kill(p, signal.SIGKILL)))(pid)
                    return True
            if not now:  # the process is gone
                pid = self._actor(RUN_TIMEOUT, stop)
            last = now
            time.sleep(0.002)
        return False

    def follow(self, stop) -> None:
        """Record the methods the next actor process runs until `stop()`."""
        pid = self._actor(RUN_TIMEOUT, stop)
        last = ""
        while pid and not stop():
            now = title(pid)
            if now != last and now.startswith("ray::UnitWorker.") and not now.endswith("__init__"):
                self.after_kill.append(now.removeprefix("ray::UnitWorker."))
            last = now
            time.sleep(0.002)


def check_run(dst: str, options: dict | None, reference: dict[str, bytes]) -> dict:
    """The suite's invariants on a finished run at `dst`; returns the manifest's latest rows."""
    manifest = Manifest(dst, options)
    table = manifest.progress()
    progress, latest = table.to_pylist(), manifest.latest(table)
    plan = manifest.read_table("clips").to_pylist()
    videos = manifest.read_table("videos").to_pylist()
    errors = {r["id"]: r["error"] for r in latest.values() if r["status"] == "failed"}

    assert plan and not [u["id"] for u in plan if u["id"] not in latest], "units without a row (lost)"
    twice = {key: n for key, n in Counter((r["id"], r["attempt"]) for r in progress if r["status"] == "done").items()
             if n > 1}
    assert not twice, f"(unit, attempt) with more than one 'done' row: {twice}"
    assert len(videos) == len(reference)
    for v in videos:
        row = latest.get(v["video_id"])
        assert row is not None, f"{v['uri']}: no row"
        assert row["status"] == "done" or row["error"], f"{v['uri']}: failed without a reason"
    assert not errors, f"failed rows: {errors}"
    assert all(latest[u["id"]]["status"] == "done" for u in plan)
    for v in videos:
        name = v["output"].rsplit("/", 1)[-1]
        with fsspec.open(v["output"], "rb", **(options or {})) as f:
            assert f.read() == reference[name], f"{v['output']} differs from the undisturbed run's"
    return latest


@pytest.mark.parametrize("method, nth", [("sample", 3), ("flows", 2)])
def test_worker_actor_killed_mid_unit(method, nth, rays, src, tiny_model, reference, tmp_path):
    """SIGKILL the actor's process inside its nth `method` call: Ray restarts it
    (max_restarts) and retries the call (max_task_retries); the run finishes as if
    nothing happened."""
    rays.local()
    dst = tmp_path / "out"
    job = Background(run, str(src), str(dst), config(tiny_model), quiet=True)
    watch = ActorWatch(os.getpid())
    killed = watch.kill_in(method, nth, stop=job.done)
    committed_at_kill = len(Manifest(str(dst)).committed()) if killed else None
    watch.follow(stop=job.done)
    summary = job.join()
    print(f"killed pid {watch.pids[0] if watch.pids else None} in {watch.killed_title!r} with {committed_at_kill} units "
          f"committed; actor processes {watch.pids}; the next one ran {watch.after_kill}")
    assert killed, f"the run ended before the actor entered {method} {nth} times: {summary.format()}"
    assert watch.killed_title == f"ray::UnitWorker.{method}"
    assert committed_at_kill < sum(1 for _ in Manifest(str(dst)).read_table("clips").to_pylist())
    assert len(watch.pids) >= 2, "the actor was not restarted"
    assert watch.after_kill and watch.after_kill[0] == method, (
        f"the restarted actor's first call was not the retried {method}: {watch.after_kill}")
    check_run(str(dst), None, reference["outputs"])
    assert summary.ok, summary.format()


def test_transient_s3_errors(rays, src, tiny_model, reference, s3_bucket):
    """Sources and destination on S3 behind a proxy that fails about one request in
    five: the run finishes with the bytes of a clean local run."""
    rays.local()
    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    for name in VIDEOS:
        fs.put(str(src / name), f"{bucket}/in/{name}")

    endpoint = options["client_kwargs"]["endpoint_url"]
    # Besides the draws: a commit whose response is lost (its retry finds it made), a payload
    # PUT reset, a payload read slowed down.
    first = {"lost": r"^PUT .*/progress/part-", "reset": r"^PUT .*/payload/", "slowdown": r"^GET .*/payload/"}
    with FaultProxy(endpoint, seed=12, rates={"slowdown": 0.08, "reset": 0.06, "lost": 0.06}, first=first) as proxy:
        via = {**options, "client_kwargs": {**options["client_kwargs"], "endpoint_url": proxy.url}}
        summary = run(f"s3://{bucket}/in", f"s3://{bucket}/proxied", config(tiny_model), storage_options=via,
                      quiet=True)
    print(f"proxy: {proxy.counts}")
    for fault in proxy.faults:
        print(*fault)
    hit = {kind: any(f == kind and re.search(first[kind], f"{m} {path}") for f, m, path in proxy.faults) for kind in first}
    assert all(hit.values()), f"targeted faults not injected: {hit}; {proxy.faults}"
    assert all(proxy.counts[k] > 0 for k in ("slowdown", "reset", "lost")), proxy.counts
    assert summary.ok, f"{summary.format()}\nproxy: {proxy.counts}"
    check_run(f"s3://{bucket}/proxied", options, reference["outputs"])


def test_driver_killed_while_encoding(rays, src, tiny_model, reference, tmp_path):
    """`raywarp run` (its own embedded Ray) killed, with every process of its cluster,
    while a video's encoder is inside `encode_units`, before the video's row; the same
    run again completes it, byte-identical."""
    dst = tmp_path / "out"
    log = tmp_path / "driver.log"
    env = {**os.environ, "RAY_ADDRESS": "local"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "raywarp.cli", "run", str(src), "--out", str(dst),
                                 *cli_args(tiny_model)], cwd=ROOT, env=env, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)
    manifest = Manifest(str(dst))
    killed_mid_encode, committed = None, set()
    try:
        while proc.poll() is None and killed_mid_encode is None:
            encoder = find_process(proc.pid, "ray::encode_units", RUN_TIMEOUT, poll=0.002,
                                   stop=lambda: proc.poll() is not None)
            if encoder is None:
                break
            os.kill(encoder, signal.SIGSTOP)  # frozen inside the task: look at the manifest at leisure
            latest = manifest.latest()
            committed = {i for i, row in latest.items() if row["status"] == "done"}
            plan = manifest.read_table("clips").to_pylist()
            for v in manifest.read_table("videos").to_pylist():
                units = [u["id"] for u in plan if u["video_id"] == v["video_id"]]
                if v["video_id"] not in latest and all(latest.get(u, {}).get("status") == "done" for u in units):
                    killed_mid_encode = v["uri"]
            if killed_mid_encode is None:  # it had written its row already: wait for the next video
                os.kill(encoder, signal.SIGCONT)
                while title(encoder) == "ray::encode_units":
                    time.sleep(0.002)
    finally:
        group = {**descendants(proc.pid), proc.pid: None}
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_all({pid: start for pid, start in group.items() if start is not None})  # workers have groups of their own
        proc.wait()
        left = wait_gone({pid: start for pid, start in group.items() if start is not None}, 30)
    print(f"killed the driver while {killed_mid_encode} was being encoded; {len(committed)} units committed")
    assert not left, f"processes of the killed run still alive: {left}"
    assert killed_mid_encode, f"no encoder was caught before its video's row; the driver printed:\n{log.read_text()[-3000:]}"
    assert manifest.run_info()["config_hash"] == reference["hash"]
    assert manifest.latest().get(next(v["video_id"] for v in manifest.read_table("videos").to_pylist()
                                      if v["uri"] == killed_mid_encode)) is None  # no row came after the kill

    rays.local()
    summary = run(str(src), str(dst), config(tiny_model), quiet=True)
    check_run(str(dst), None, reference["outputs"])
    assert not {r["id"] for r in manifest.progress().to_pylist() if r["attempt"] == 2} & committed, "recomputed"
    assert summary.ok, summary.format()


def test_worker_node_removed_mid_run(rays, src, tiny_model, reference, tmp_path, monkeypatch):
    """A cluster of a head without CPUs (so every task and the actor run on worker nodes)
    and one worker node, removed (its processes SIGKILLed) while the actor is inside
    `sample`; a new node is added and the run finishes."""
    from ray.cluster_utils import Cluster

    rays.down()
    # Cluster() records its address for a plain ray.init() on the machine: other users' runs
    # would join this cluster. It is connected to explicitly here, so nothing is recorded.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        first = cluster.add_node(num_cpus=2)
        ray.init(address=cluster.address, log_to_driver=False)
        raylet = first.all_processes["raylet"][0].process.pid
        dst = tmp_path / "out"
        job = Background(run, str(src), str(dst), config(tiny_model), quiet=True)
        watch = ActorWatch(raylet)
        removed = watch.kill_in("sample", 2, stop=job.done,
                                action=lambda pid: cluster.remove_node(first, allow_graceful=False))
        if removed:
            second = cluster.add_node(num_cpus=2)
            watch.root = second.all_processes["raylet"][0].process.pid
            watch.follow(stop=job.done)
        summary = job.join()
        assert removed, f"the run ended before the actor entered sample twice: {summary.format()}"
        assert watch.after_kill, "no actor ran on the new node"
        check_run(str(dst), None, reference["outputs"])
        assert summary.ok, summary.format()
    finally:
        ray.shutdown()
        processes = descendants(os.getpid())
        cluster.shutdown()
        slow = wait_gone(processes, 30)
        kill_all(slow)  # Ray's test cluster can be slow to stop a loaded machine's workers
        left = wait_gone(slow, 10)
    assert not left, f"processes of the cluster still alive after SIGKILL: {left}"


def test_two_drivers_started_together_on_one_output(src, tiny_model, reference, tmp_path):
    """Two `raywarp run` on one DST at once: exactly one runs; the other is refused at
    once, naming the run that holds DST; no unit is computed twice."""
    dst = tmp_path / "out"
    command = [sys.executable, "-m", "raywarp.cli", "run", str(src), "--out", str(dst), *cli_args(tiny_model)]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    drivers = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    ended = [driver.communicate(timeout=RUN_TIMEOUT) for driver in drivers]
    codes = [driver.returncode for driver in drivers]
    assert sorted(codes) == [0, 2], ended
    winner = drivers[codes.index(0)]
    refusal = ended[codes.index(2)][1]
    assert "is being written by another run" in refusal and f"pid {winner.pid}" in refusal, refusal
    assert len(Manifest(str(dst)).run_info()["attempts"]) == 1  # the refused one recorded no attempt
    check_run(str(dst), None, reference["outputs"])
