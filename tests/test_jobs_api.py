"""`jobs/restore.py` submitted through the Ray Jobs API to a real `ray start --head` cluster.

Everything between the submit and the outputs is the real thing, as `ray job submit
--working-dir . --runtime-env cluster/runtime_env.yaml -- python jobs/restore.py ...` does it:

- a head node started by the `ray` CLI (GCS, raylet, dashboard with its job manager), on
  free ports and a private short --temp-dir, so it neither collides with nor touches other
  Ray clusters on the machine;
- `JobSubmissionClient` over the dashboard's HTTP API, with the shipped
  `cluster/runtime_env.yaml` (its env_vars and excludes): the working dir is zipped,
  uploaded to the GCS, unpacked under the session dir, and the entrypoint runs from there;
- the job driver connecting with `--address auto` (resolved from the RAY_ADDRESS the job
  supervisor sets), the pipeline's Ray tasks and worker actors on that cluster;
- the job's exit status as Ray reports it: one corrupt input makes the entrypoint exit 1,
  which Ray records as a FAILED job, while the good videos are still restored and the
  manifest says so.

Teardown stops only the processes of this cluster (found by temp dir and GCS port), never
with `ray stop`, which would take down every other Ray instance on the machine.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

from raywarp import synthetic
from raywarp.pipeline.encode import encode_video
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.source import probe

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (all held open while choosing, so they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _processes() -> dict[tuple[int, int], tuple[int, list[str], list[str]]]:
    """(pid, start time) -> (parent pid, argv, paths it uses: cwd and open files) of every
    live, non-zombie process; the start time keeps a reused pid from passing for ours."""
    procs = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # exited meanwhile
            continue
        try:
            links = [proc / "cwd", *(proc / "fd").iterdir()]
        except OSError:
            links = [proc / "cwd"]
        paths = []
        for link in links:
            try:
                paths.append(os.readlink(link))
            except OSError:
                pass
        if stat[0] != "Z":  # a zombie is gone already; its parent reaps it
            procs[(int(proc.name), int(stat[19]))] = (int(stat[1]), argv, paths)
    return procs


def cluster_processes(temp_dir: str, gcs_port: int | None) -> set[tuple[int, int]]:
    """(pid, start time) of this cluster's processes only: those naming or using `temp_dir`
    (a unique mkdtemp path; every Ray process logs under it), those pointed at the GCS on
    `gcs_port` (the gcs_server itself, the client server; only while that GCS holds the
    port, so pass None once it may be gone), and their descendants."""
    assert temp_dir.startswith("/tmp/rw") and len(temp_dir) > len("/tmp/rw") and gcs_port != 0
    inside = re.compile(re.escape(temp_dir) + r"(/|$)")
    at_gcs = re.compile(rf"^--(gcs_server_port=|gcs-address=\S*:|address=\S*:){gcs_port}$")
    procs = _processes()
    mine = {key for key, (_, argv, paths) in procs.items()
            if any(inside.search(x) for x in argv + paths) or (gcs_port and any(at_gcs.match(x) for x in argv))}
    children: dict[int, list[tuple[int, int]]] = {}
    for key, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(key)
    todo = list(mine)
    while todo:
        for child in children.get(todo.pop()[0], []):
            if child not in mine:
                mine.add(child)
                todo.append(child)
    return mine


def stop_cluster(temp_dir: str, gcs_port: int) -> set[tuple[int, int]]:
    """SIGTERM this cluster's processes, SIGKILL what is left after a few seconds; returns
    the survivors. Processes found once stay tracked after they are reparented."""
    tracked = cluster_processes(temp_dir, gcs_port)

    def alive():
        live = set(_processes())
        tracked.update(cluster_processes(temp_dir, None))
        return tracked & live

    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        for pid, _ in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while (left := alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
    return left


def wait_for_dashboard(url: str, head: subprocess.CompletedProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"dashboard at {url} did not answer in {timeout:.0f} s\n{head.stdout}\n{head.stderr}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ray_head():
    """A head node started with the `ray` CLI; yields (dashboard URL, temp dir)."""
    temp_dir = tempfile.mkdtemp(prefix="rw", dir="/tmp")  # unix socket paths must stay < 108 chars
    gcs, dashboard, agent_http, agent_grpc, client, env_agent, metrics = free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "disabled"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # job entrypoints run `python`
    cmd = [str(RAY), "start", "--head", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
           "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--ray-client-server-port", str(client), "--runtime-env-agent-port", str(env_agent),
           "--metrics-export-port", str(metrics),
           "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", temp_dir, "--disable-usage-stats"]
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")  # for JobSubmissionClient in this process
    mp.delenv("RAY_ADDRESS", raising=False)
    try:
        head = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert head.returncode == 0, f"ray start failed ({head.returncode}):\n{head.stdout}\n{head.stderr}"
        url = f"http://127.0.0.1:{dashboard}"
        wait_for_dashboard(url, head)
        yield url, temp_dir
    finally:
        left = stop_cluster(temp_dir, gcs)
        shutil.rmtree(temp_dir, ignore_errors=True)
        mp.undo()
        assert not left, f"processes of the test cluster survived teardown (pid, start): {sorted(left)}"


def write_video(path: Path, photo: str, frames: int, size, **motion) -> None:
    video, _ = synthetic.affine_video(photo, frames, size, synthetic.affine_motion(size, **motion))
    frames_u8 = (video * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    encode_video(iter(frames_u8), str(path), Fraction(25), crf=10, gop=4)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """One clip each (clip_len 7, so no seam pass: one Ray Data pass keeps the job short) and a corrupt file."""
    root = tmp_path_factory.mktemp("archive")
    write_video(root / "walk.mp4", "coffee", 7, (16, 16), shift=(1.0, 0.0))
    write_video(root / "short.mp4", "rocket", 4, (16, 16), shift=(0.0, 1.0))
    (root / "bad.mp4").write_bytes(os.urandom(5000))
    return root


def runtime_env() -> dict:
    """cluster/runtime_env.yaml plus the working dir, as `ray job submit --working-dir .` builds it."""
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    env["working_dir"] = str(ROOT)
    env["excludes"] = list(env.get("excludes", [])) + ["tests/", "*.whl", "/.whl/", "/.gl/", ".ci/"]
    env["env_vars"] = {**env.get("env_vars", {}), "RAY_AUTH_MODE": "disabled"}
    return env


@pytest.mark.slow
def test_restore_job_through_the_jobs_api(ray_head, archive, tiny_model, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    url, _ = ray_head
    dst = tmp_path / "restored"
    client = JobSubmissionClient(url)
    entrypoint = shlex.join(["python", "jobs/restore.py", str(archive), "--out", str(dst), "--task", "sr",
                             "--model", tiny_model, "--clip-len", "7", "--overlap", "2", "--steps", "3",
                             "--max-actors", "1", "--address", "auto"])
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env())

    deadline = time.monotonic() + 300
    while (status := client.get_job_status(job_id)) not in TERMINAL:
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after 300 s; logs:\n{client.get_job_logs(job_id)}")
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    info = client.get_job_info(job_id)

    # The corrupt input, and only it, makes the entrypoint exit 1; Ray calls that FAILED.
    assert status == JobStatus.FAILED, logs
    assert info.driver_exit_code == 1, f"{info.message}\n{logs}"
    assert "2 videos done, 1 failed" in logs, logs
    failed_lines = [line for line in logs.splitlines() if line.strip().startswith("FAILED ")]
    assert len(failed_lines) == 1 and "bad.mp4" in failed_lines[0], logs

    for name, frames in (("walk", 7), ("short", 4)):
        out = probe(str(dst / f"{name}.mp4"))
        assert out.frames == frames
        assert (out.width, out.height) == (64, 64)  # --scale defaults to 4
    assert not (dst / "bad.mp4").exists()

    manifest = Manifest(str(dst))
    progress = manifest.status()
    assert (progress["videos_done"], progress["videos_failed"], progress["clips_pending"]) == (2, 1, 0), progress
    assert [e["uri"] for e in progress["last_errors"]] == [str(archive / "bad.mp4")]
    plan = manifest.read_table("clips").to_pylist()
    latest = manifest.latest()
    assert plan and all(latest[u["id"]]["status"] == "done" for u in plan)
