"""One writer job per run directory: ``<run>/.lock``, held while a train job writes the run.

The lock is a JSON file ``{"host", "pid", "started", "heartbeat", "token"}``. Locally it is created
atomically (``O_EXCL``); its holder rewrites ``heartbeat`` every :data:`HEARTBEAT_S` seconds from a
daemon thread and deletes the file when the job ends (normally, by an exception, or by SIGTERM,
which the train loop turns into a normal return). A multi-process job is one job: only process 0
takes the lock.

A lock is stale, and a new job takes it over with a warning, when its holder is on this host and
its pid no longer runs (or now belongs to a process started after the lock: a reused pid), or when
it is on another host (or unreadable) and its heartbeat is older than :data:`STALE_AFTER_S` (the
holder died with its machine). So a rerun on another host after a hard crash waits out that delay,
or deletes the file; a live job on this host is never taken over.

Object stores (``gs://``, ``s3://``) have no exclusive create: the lock is written, then read back,
which catches most but not all races between two jobs starting within the same second.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Self

from etils import epath

from jaxinterp.store.paths import on_object_store
from jaxinterp.runs.integrity import warn

__all__ = ["HEARTBEAT_S", "LOCK", "STALE_AFTER_S", "RunLock", "RunLockedError"]

LOCK = ".lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0  # ten missed heartbeats: longer than any pause of a live job's daemon thread
_READ_BACK_WAIT_S = 1.0  # object stores: how long a racing writer has to overwrite ours before we read back


class RunLockedError(FileExistsError):
    """Another train job holds the run directory."""


def _process_start(pid: int) -> float | None:
    """When process ``pid`` of this host started (Unix time), where ``/proc`` tells; else ``None``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_reason(holder: dict[str, Any], now: float | None = None) -> str | None:
    """Why the lock ``holder`` no longer holds the run (``None``: it does)."""
    if holder.get("host") == socket.gethostname():  # this host can tell for sure
        pid = int(holder.get("pid", -1))
        if pid <= 0 or not _pid_alive(pid):
            return f"pid {pid} no longer runs on this host"
        began = _process_start(pid)
        if began is not None and began > float(holder.get("started", 0)) + 1:  # 1 s: /proc's tick rounding
            return f"pid {pid} is now another process, started after the lock"
        return None
    now = time.time() if now is None else now
    heartbeat = float(holder.get("heartbeat", holder.get("started", 0)))
    if now - heartbeat > STALE_AFTER_S:
        return f"its last heartbeat was {now - heartbeat:.0f} s ago (stale after {STALE_AFTER_S:.0f} s)"
    return None


class RunLock:
    """The lock of one run directory; use as a context manager around the job's writes.

    Raises (on enter):
      RunLockedError: a live job holds it; the message names its host and pid.
    """

    def __init__(self, run_dir: epath.Path):
        self.run_dir, self.path = run_dir, run_dir / LOCK
        now = time.time()
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now,
                       "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # being written, or cut short by a crash: its age is the file's
            written = self.path.stat().mtime
            return {"host": "?", "pid": "?", "started": written, "heartbeat": written, "token": ""}

    def _create(self) -> bool:
        """Writes our record unless a lock exists; whether we now hold the lock."""
        text = json.dumps(self.record)
        if on_object_store(self.path):
            if self.path.exists():
                return False
            self.path.write_text(text)
            time.sleep(_READ_BACK_WAIT_S)
            holder = self._read()
            return holder is not None and holder.get("token") == self.record["token"]
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        return True

    def acquire(self) -> None:
        for _ in range(3):  # a takeover can race with another job's; then look again
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="jaxinterp-run-lock", daemon=True)
                self._thread.start()
                return
            holder = self._read()
            if holder is None:
                continue
            reason = stale_reason(holder)
            if reason is None:
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
                raise RunLockedError(
                    f"{self.run_dir} is being written by another train job (host {holder.get('host')}, "
                    f"pid {holder.get('pid')}, since {started}); wait for it to end, or if no such job runs, "
                    f"delete {self.path}")
            if self._read() == holder:  # still the stale one, not a lock another job just took
                warn(f"{self.path}: taking over the lock of host {holder.get('host')}, pid {holder.get('pid')}: "
                     f"{reason}")
                self.path.unlink(missing_ok=True)
        raise RunLockedError(f"{self.path}: other jobs keep taking this lock; run one train job per run directory")

    def _beat(self) -> None:
        """Rewrites the heartbeat until released (a failed write is retried at the next beat)."""
        while not self._stop.wait(HEARTBEAT_S):
            self.record["heartbeat"] = time.time()
            try:
                holder = self._read()
                if holder is None or holder.get("token") != self.record["token"]:
                    warn(f"{self.path}: this job's lock was removed or taken over; another job may write the run")
                    return
                self._write_record()
            except OSError as error:
                warn(f"{self.path}: could not refresh the lock ({error})")

    def _write_record(self) -> None:
        text = json.dumps(self.record)
        if on_object_store(self.path):
            self.path.write_text(text)
            return
        staging = Path(f"{self.path}.{self.record['token']}")
        staging.write_text(text)
        os.replace(staging, self.path)  # readers see the old or the new record, never half of one

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = self._read()
        if holder is not None and holder.get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
