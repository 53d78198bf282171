"""raywarp.pipeline.lease: one run per DST.

Every test runs on a local directory and on S3 (moto's server), like the manifest's;
the racing drivers are separate processes started together at a barrier.
"""

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from raywarp.pipeline.lease import Lease, LeaseHeldError, LeaseLostError
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.progress import format_seconds

FAST = {"beat_seconds": 0.25, "timeout_seconds": 1.5}
NO_SUCH_PID = 2**22 + 1  # above Linux's largest pid_max


def lease_files(dst) -> list[str]:
    return [n for n in Manifest(*dst).list_names("lease") if not n.startswith(".tmp-")]


def marker(dst, generation: int) -> dict:
    return json.loads(Manifest(*dst).read_bytes(f"lease/{generation:012d}.json"))


def test_acquire_release_reacquire(dst):
    first = Lease(Manifest(*dst), **FAST)
    with first:
        assert first.generation == 1 and not first.lost.is_set()
        assert marker(dst, 1)["owner"] == first.owner
    assert lease_files(dst) == ["000000000001.beat", "000000000001.json", "000000000001.released"]

    second = Lease(Manifest(*dst), **FAST).acquire()  # released: taken over at once
    assert second.generation == 2
    second.release()
    second.release()  # a second release does nothing
    first.acquire()
    assert first.generation == 3
    first.release()
    # The holder before the newest stays for the record; older ones are deleted.
    assert {n.split(".")[0] for n in lease_files(dst)} == {"000000000002", "000000000003"}


def test_a_live_holder_refuses_another_run_by_name(dst):
    with Lease(Manifest(*dst), **FAST) as holder:
        time.sleep(FAST["timeout_seconds"] + 0.5)  # its heartbeats keep it live past the timeout
        with pytest.raises(LeaseHeldError) as err:
            Lease(Manifest(*dst)).acquire()
        assert not holder.lost.is_set()
    message = str(err.value)
    for needle in (dst[0], f"owner {holder.owner}", f"host {socket.gethostname()}", f"pid {os.getpid()}",
                   f"stale after {format_seconds(FAST['timeout_seconds'])} without a heartbeat",
                   "or as soon as pid", "/_raywarp/lease/000000000001.json"):
        assert needle in message
    assert re.search(r"last heartbeat [01]s ago", message)
    assert lease_files(dst)[0] == "000000000001.beat" and len(lease_files(dst)) == 3  # the refused run wrote nothing


def test_a_create_whose_reply_was_lost_is_this_runs_own(dst, monkeypatch):
    # S3 wrote the marker, the reply was lost, the retried create-once PUT found it (412):
    # the run must see its own marker, not "another run".
    manifest = Manifest(*dst)
    write = manifest.write_bytes

    def reply_lost(rel, data, create=False):
        write(rel, data, create=create)
        if create:
            raise FileExistsError(rel)

    monkeypatch.setattr(manifest, "write_bytes", reply_lost)
    lease = Lease(manifest, **FAST).acquire()
    assert lease.generation == 1 and marker(dst, 1)["owner"] == lease.owner
    lease.release()
    assert "000000000001.released" in lease_files(dst)


def test_a_holder_on_another_machine_counts_only_by_its_heartbeat(dst):
    """Its pid means nothing here: it is refused while its beat is fresh, whatever the pid."""
    manifest = Manifest(*dst)
    now = time.time()
    manifest.write_bytes("lease/000000000001.json", json.dumps({
        "owner": "elsewhere", "host": "gpu-7", "pid": NO_SUCH_PID, "machine": "other-boot-id/pid:[1]",
        "process_start": "1", "started_at": now - 600, "beat_seconds": 10.0, "timeout_seconds": 60.0}).encode(),
        create=True)
    manifest.write_bytes("lease/000000000001.beat", repr(now - 20).encode())
    with pytest.raises(LeaseHeldError) as err:
        Lease(manifest).acquire()
    assert "owner elsewhere on host gpu-7" in str(err.value) and "last heartbeat 20s ago" in str(err.value)
    assert "in 40s" in str(err.value) and "as soon as" not in str(err.value)

    manifest.write_bytes("lease/000000000001.beat", repr(now - 61).encode())
    with Lease(manifest) as taker:
        assert taker.generation == 2


def test_a_stale_lease_is_taken_over_and_its_holder_notices(dst):
    holder = Lease(Manifest(*dst), **FAST).acquire()
    holder._beat = lambda: None  # alive but silent: paused, or cut off from storage
    with pytest.raises(LeaseHeldError):
        Lease(Manifest(*dst), **FAST).acquire()
    time.sleep(FAST["timeout_seconds"] + 0.1)
    taker = Lease(Manifest(*dst), **FAST).acquire()
    assert taker.generation == 2
    assert holder.lost.wait(4 * FAST["beat_seconds"])
    with pytest.raises(LeaseLostError, match=f"taken over by owner {taker.owner}"):
        holder.check()
    holder.release()
    assert "000000000001.released" not in lease_files(dst)  # not its lease any more
    assert not taker.lost.is_set()
    taker.release()


def test_a_run_that_listed_before_a_cleanup_does_not_take_a_deleted_generation(dst):
    for _ in range(2):
        Lease(Manifest(*dst), **FAST).acquire().release()
    with Lease(Manifest(*dst), **FAST) as holder:  # generation 3: generation 1 is deleted
        assert not any(n.startswith("000000000001.") for n in lease_files(dst))
        late = Lease(Manifest(*dst), **FAST)
        stale_listings, real_files = [{}], late._files  # its first look predates every generation
        late._files = lambda: stale_listings.pop() if stale_listings else real_files()
        with pytest.raises(LeaseHeldError, match=holder.owner):
            late.acquire()
        assert marker(dst, 1)["owner"] == late.owner  # it did create generation 1 again, and gave way
        assert not holder.lost.is_set()
    with late:
        assert late.generation == 4
    assert {n.split(".")[0] for n in lease_files(dst)} == {"000000000003", "000000000004"}


def test_a_crashed_holder_on_this_machine_is_taken_over_at_once(dst):
    """A run that died without releasing (here: exits at once) holds nobody up for the
    timeout (60 s by default) when resumed on the same machine."""
    script = ("import json, os, sys\n"
              "from raywarp.pipeline.lease import Lease\n"
              "from raywarp.pipeline.manifest import Manifest\n"
              "print(Lease(Manifest(sys.argv[1], json.loads(sys.argv[2]))).acquire().owner, flush=True)\n"
              "os._exit(0)\n")
    crashed = subprocess.run([sys.executable, "-c", script, dst[0], json.dumps(dst[1])],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert marker(dst, 1)["owner"] == crashed
    with Lease(Manifest(*dst)) as resumed:
        assert resumed.generation == 2


def test_a_holder_that_cannot_beat_past_the_timeout_counts_itself_lost(tmp_path):
    manifest = Manifest(str(tmp_path / "out"))
    holder = Lease(manifest, **FAST).acquire()

    def unreachable(*args, **kwargs):
        raise OSError("storage unreachable")

    manifest.list_names = manifest.write_bytes = unreachable
    assert holder.lost.wait(FAST["timeout_seconds"] + 4 * FAST["beat_seconds"])
    assert "no heartbeat written" in holder.lost_reason and "storage unreachable" in holder.lost_reason
    holder.release()


def test_refuses_inconsistent_timeouts():
    with pytest.raises(ValueError, match="beat_seconds"):
        Lease(Manifest("unused"), beat_seconds=10, timeout_seconds=15)


# -- racing drivers ------------------------------------------------------------------

RACERS, ROUNDS = 3, 3


def race(dst: str, options: dict | None, start, results) -> None:
    """One driver: each round, acquire the round's DST together with the others, hold it
    until every racer has tried, then release."""
    for round_ in range(ROUNDS):
        manifest = Manifest(f"{dst}/round-{round_}", options)
        manifest.write_bytes = slow_to_create(manifest.write_bytes)
        lease = Lease(manifest)
        start.wait(timeout=60)
        try:
            lease.acquire()
            results.put((round_, "won", lease.owner))
        except LeaseHeldError as err:
            results.put((round_, "refused", str(err)))
        except Exception as err:
            results.put((round_, "error", repr(err)))
        start.wait(timeout=60)
        lease.release()


def slow_to_create(write):
    """``write`` that waits before a create: every racer has looked (and found the lease
    free) before the first one creates, so they all race for the same generation."""

    def slow(rel, data, create=False):
        if create:
            time.sleep(0.1)
        return write(rel, data, create)

    return slow


def test_racing_drivers_one_wins(dst):
    context = multiprocessing.get_context("spawn")  # no fork of s3fs's or moto's threads
    start, results = context.Barrier(RACERS), context.Queue()
    racers = [context.Process(target=race, args=(*dst, start, results)) for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    try:
        outcomes = [results.get(timeout=120) for _ in range(RACERS * ROUNDS)]
    finally:
        for racer in racers:
            racer.join(timeout=60)
            if racer.exitcode is None:
                racer.kill()
    for round_ in range(ROUNDS):
        got = [(what, detail) for r, what, detail in outcomes if r == round_]
        winners = [detail for what, detail in got if what == "won"]
        assert len(winners) == 1 and sorted(what for what, _ in got) == ["refused"] * (RACERS - 1) + ["won"], got
        assert all(f"owner {winners[0]}" in detail for what, detail in got if what == "refused")
        round_dst = (f"{dst[0]}/round-{round_}", dst[1])
        assert lease_files(round_dst) == ["000000000001.beat", "000000000001.json", "000000000001.released"]
        assert marker(round_dst, 1)["owner"] == winners[0]
