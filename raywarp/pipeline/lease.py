"""One writer per output: the lease a run holds on DST.

Two drivers writing one DST would interleave attempts in ``run.json`` and redo each
other's units, so a run first takes the lease, and a second one is refused with a
message naming the holder. The lease lives beside the manifest and goes through its
files (local directory or S3 alike)::

    DST/_raywarp/lease/<generation>.json       create-once: owner id, host, pid, machine, started_at, timeouts
    DST/_raywarp/lease/<generation>.beat       the holder's heartbeat: its time, rewritten every beat_seconds
    DST/_raywarp/lease/<generation>.released   written by the holder on a clean exit

Generations are numbered 1, 2, ... (12 digits); the newest ``.json`` owns DST. Taking
the lease, first or over from a released or stale holder, is creating the next
generation's ``.json`` create-once (``If-None-Match: *`` on S3, a hard link locally), so
of two racers exactly one wins and the other sees the winner. Nobody deletes or renames
another's marker: with one lock file, taking over a stale lock is delete-then-create,
and two takers can then both delete and both create (S3 has no atomic rename or
compare-and-delete either). A new holder deletes the files of generations older than
the one before it, to keep the folder small; a racer whose listing predates such a
cleanup could then create an old generation again, so every new holder reads its
marker back and lists once more, and gives way if a newer generation exists or the
marker is not its own (which also catches a store whose conditional write checks and
then writes without a lock, as moto's server's does).

A holder counts as gone, and its lease free, when it wrote ``.released``; when its last
heartbeat (``started_at`` before the first) is older than its own ``timeout_seconds``;
or at once when it ran on this machine and its process has exited (a crashed run
resumed on the same machine does not wait the timeout). "This machine" is Linux's boot
id and pid namespace, so hosts sharing a name or containers sharing a host are not
confused, and a pid is matched with its start time, so a reused pid is not the holder.
Staleness compares the holder's clock (in ``.beat``) with the reader's: hosts' clocks
must agree to well within ``timeout_seconds`` (NTP keeps them within milliseconds).

The heartbeat thread also checks, before every beat, that the lease is still its own.
If a newer generation appeared (this run was judged stale: paused, partitioned), or
beats failed for longer than the timeout, ``lost`` is set and the driver must stop
writing. S3 offers no fencing, so writes in the window before the driver notices
(at most ``beat_seconds``) still land; the run's writes are deterministic payloads and
append-only commits, so the overlap costs repeated work, not a broken manifest.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.progress import format_seconds

FOLDER = "lease"
BEAT_SECONDS = 10.0
TIMEOUT_SECONDS = 60.0
_FILE = re.compile(r"(\d{12})\.(json|beat|released)")
_LOOKS = 5  # each race an acquire loses costs one look; more means the lease changes hands constantly

log = logging.getLogger(__name__)


class LeaseHeldError(RuntimeError):
    """Another live run holds the lease on DST; the message names it."""


class LeaseLostError(RuntimeError):
    """This run's lease was taken over, or could not be renewed: it must stop writing."""


@dataclass
class _Holder:
    """The newest generation, as read from storage."""

    generation: int
    marker: dict
    last_beat: float  # the holder's clock
    released: bool

    def stale_in(self, now: float) -> float:
        return self.last_beat + self.marker["timeout_seconds"] - now

    def on_this_machine(self) -> bool:
        return self.marker["machine"] == _machine()

    def gone(self, now: float) -> bool:
        exited = self.on_this_machine() and not _running(self.marker["pid"], self.marker["process_start"])
        return self.released or exited or self.stale_in(now) <= 0


class Lease:
    """The lease on ``manifest``'s DST (see the module docstring)::

        with Lease(manifest) as lease:  # LeaseHeldError if another live run holds it
            ...                         # lease.check() raises LeaseLostError once it was lost

    ``lost`` (an Event) is set by the heartbeat thread when the lease is lost;
    ``lost_reason`` says why. A released lease may be acquired again (a new generation).
    """

    def __init__(self, manifest: Manifest, beat_seconds: float = BEAT_SECONDS,
                 timeout_seconds: float = TIMEOUT_SECONDS):
        if not 0 < 2 * beat_seconds <= timeout_seconds:
            raise ValueError(f"need 0 < 2 * beat_seconds <= timeout_seconds (a late beat must not look stale); "
                             f"got {beat_seconds} and {timeout_seconds}")
        self.manifest = manifest
        self.beat_seconds, self.timeout_seconds = beat_seconds, timeout_seconds
        self.owner = uuid.uuid4().hex
        self.generation: int | None = None
        self.lost = threading.Event()
        self.lost_reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> Lease:
        """Take the lease if it is free (never taken, released, stale, or its holder's
        process gone from this machine); LeaseHeldError if a live run holds it."""
        if self._thread is not None:
            raise RuntimeError(f"the lease on {self.manifest.dst} is already held by this object")
        for _ in range(_LOOKS):
            files = self._files()
            top = _newest(files)
            if top:
                try:
                    holder = self._holder(top, files[top])
                except FileNotFoundError:
                    continue  # cleaned up by a newer holder since the listing
                if holder.marker["owner"] == self.owner and not holder.released:
                    # our own create, whose reply was lost and whose retry then found it
                    self._hold(top, files)
                    return self
                if not holder.gone(time.time()):
                    raise LeaseHeldError(self._held_message(holder))
            try:
                self.manifest.write_bytes(_rel(top + 1, "json"), self._marker(), create=True)
            except FileExistsError:
                continue  # another run took it first; the next look names it
            if self._taken_by(top + 1) is None:
                self._hold(top + 1, files)
                return self
        raise RuntimeError(f"the lease on {self.manifest.dst} changed hands {_LOOKS} times while this run "
                           "looked at it; try again")

    def release(self) -> None:
        """Stop the heartbeat and, unless the lease was lost, mark it released so that the
        next run takes over at once. Safe to call when not held."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.lost.is_set():
            return
        try:
            self.manifest.write_bytes(_rel(self.generation, "released"), repr(time.time()).encode())
        except OSError as err:  # raising would hide why the run ends; the next run waits out the timeout instead
            log.warning("lease on %s: could not mark it released (%r); the next run takes over once it is stale",
                        self.manifest.dst, err)

    def check(self) -> None:
        """Raise LeaseLostError if the lease was lost."""
        if self.lost.is_set():
            raise LeaseLostError(self.lost_reason)

    # -- holding -------------------------------------------------------------------

    def _hold(self, generation: int, files: dict[int, set[str]]) -> None:
        self.generation = generation
        self.lost.clear()
        self.lost_reason = ""
        self._stop.clear()
        self._beat()
        self._forget(files, below=generation - 1)
        self._thread = threading.Thread(target=self._keep, name=f"lease-{generation}", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        """The heartbeat thread: every beat_seconds, beat if the lease is still this run's."""
        renewed = time.time()
        while not self._stop.wait(self.beat_seconds):
            try:
                taker = self._taken_by(self.generation)
                if taker is None:
                    self._beat()
                    renewed = time.time()
                    continue
                reason = f"taken over by {taker}"
            except Exception as err:  # storage unreachable: retry, until others may have taken it over
                silent = time.time() - renewed
                if silent <= self.timeout_seconds:
                    log.warning("lease on %s: heartbeat failed (%r); retrying", self.manifest.dst, err)
                    continue
                reason = f"no heartbeat written for {silent:.0f} s (last error {err!r}), so another run may have it"
            self.lost_reason = (f"lost the lease on {self.manifest.dst} (generation {self.generation}): {reason}; "
                                "this run must stop writing there")
            log.error(self.lost_reason)
            self.lost.set()
            return

    def _beat(self) -> None:
        self.manifest.write_bytes(_rel(self.generation, "beat"), repr(time.time()).encode())

    def _taken_by(self, generation: int) -> str | None:
        """None while ``generation`` is the newest and its marker this lease's; otherwise
        who holds the lease now."""
        newest = max(generation, _newest(self._files()))
        try:
            marker = json.loads(self.manifest.read_bytes(_rel(newest, "json")))
        except FileNotFoundError:
            if newest > generation:
                return "a newer run"
            return f"no one: {self.manifest.uri(_rel(generation, 'json'))} was deleted"
        if newest == generation and marker["owner"] == self.owner:
            return None
        return f"owner {marker['owner']} on host {marker['host']}, pid {marker['pid']} (generation {newest})"

    def _forget(self, files: dict[int, set[str]], below: int) -> None:
        """Delete the files of generations older than ``below``, best effort: what stays
        (a cleanup racing another, a lost holder's last beat) goes at the next takeover."""
        try:
            self.manifest.remove([_rel(g, kind) for g, kinds in files.items() if g < below for kind in kinds])
        except OSError as err:
            log.info("lease on %s: could not delete old generations (%r)", self.manifest.dst, err)

    # -- reading -------------------------------------------------------------------

    def _files(self) -> dict[int, set[str]]:
        """Generation -> the kinds of its files now in the lease folder."""
        files: dict[int, set[str]] = {}
        for name in self.manifest.list_names(FOLDER):
            if match := _FILE.fullmatch(name):
                files.setdefault(int(match[1]), set()).add(match[2])
        return files

    def _holder(self, generation: int, kinds: set[str]) -> _Holder:
        marker = json.loads(self.manifest.read_bytes(_rel(generation, "json")))
        try:
            last_beat = float(self.manifest.read_bytes(_rel(generation, "beat")))
        except FileNotFoundError:  # not yet written, or the holder died first
            last_beat = marker["started_at"]
        return _Holder(generation, marker, last_beat, "released" in kinds)

    def _marker(self) -> bytes:
        pid = os.getpid()
        return json.dumps({
            "owner": self.owner, "host": socket.gethostname(), "pid": pid, "machine": _machine(),
            "process_start": _process_start(pid), "started_at": time.time(),
            "beat_seconds": self.beat_seconds, "timeout_seconds": self.timeout_seconds,
        }, indent=2).encode()

    def _held_message(self, holder: _Holder) -> str:
        now, m = time.time(), holder.marker
        started = datetime.fromtimestamp(m["started_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        beat_ago = format_seconds(max(0.0, now - holder.last_beat))  # clocks a little apart: never "-1s ago"
        exits = f", or as soon as pid {m['pid']} exits (it runs on this machine)" if holder.on_this_machine() else ""
        return (
            f"{self.manifest.dst} is being written by another run: owner {m['owner']} on host {m['host']}, "
            f"pid {m['pid']}, started {started}, last heartbeat {beat_ago} ago.\n"
            f"It counts as stale after {format_seconds(m['timeout_seconds'])} without a heartbeat, "
            f"in {format_seconds(max(0.0, holder.stale_in(now)))}{exits}. Stop that run, or run this again then. "
            f"The lease: {self.manifest.uri(_rel(holder.generation, 'json'))}"
        )


def _rel(generation: int, kind: str) -> str:
    return f"{FOLDER}/{generation:012d}.{kind}"


def _newest(files: dict[int, set[str]]) -> int:
    """The newest generation with a marker, 0 if none (a lost holder's last beat may
    outlive its marker)."""
    return max((g for g, kinds in files.items() if "json" in kinds), default=0)


def _machine() -> str:
    """What names this machine's process table: Linux's boot id and pid namespace, else
    the host name."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return socket.gethostname()


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux); None if it is gone,
    a zombie, or this is not Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]  # fields 3 (state) and 22 (starttime) of proc(5)


def _running(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` of this machine runs; with its start time known, a process
    that reused the pid does not count."""
    if start is not None:
        return _process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, another user's
    return True
