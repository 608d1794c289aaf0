"""One writer per output folder: a lock file `OUTPUT_DIR/.capt.lock` holding the writer's pid and host.

Two runs into one `--output_dir` overwrote each other's checkpoints, bank and model without a word. The trainer's
main process takes this lock before it writes anything and gives it back when it ends. The lock is an OS lock
(`fcntl.flock`) on the file, which the OS releases when the process dies; the pid and host inside say who holds it.
A lock file left by a run that died (kill -9, power loss) is stale: found on this host with its pid no longer
running, or unlocked where the OS lock is available, it is named in a warning and taken over. A lock of another host
that this host cannot check is refused, naming it, so the user decides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

try:
    import fcntl
except ImportError:  # not on Windows: the pid and host alone decide
    fcntl = None


logger = logging.getLogger("capt")

LOCK_FILE = ".capt.lock"


class OutputDirLockedError(RuntimeError):
    """Another run is writing into the same output folder."""


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_holder(handle) -> dict | None:
    handle.seek(0)
    text = handle.read()
    if not text.strip():
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {"unreadable": text[:80]}
    return holder if isinstance(holder, dict) else {"unreadable": text[:80]}


def _describe(holder: dict) -> str:
    if "unreadable" in holder:
        return f"an unreadable record {holder['unreadable']!r}"
    return f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started')}"


class OutputDirLock:
    """The lock of one output folder; `acquire` raises `OutputDirLockedError` when another live run holds it."""

    def __init__(self, output_dir):
        self.path = os.path.join(os.fspath(output_dir), LOCK_FILE)
        self.handle = None

    def acquire(self) -> None:
        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                self._lock(handle)
                if os.path.exists(self.path) and os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino:
                    break
            except BaseException:
                handle.close()
                raise
            handle.close()  # the file was removed by the run that released it: lock the new one
        holder = _read_holder(handle)
        if holder is not None:  # the previous writer did not release it: it died, or runs without the OS lock
            if not self._stale(holder):
                handle.close()
                raise OutputDirLockedError(
                    f"{os.path.dirname(self.path)} is being written by another run ({_describe(holder)}; lock file "
                    f"{self.path}). Wait for it, or use another --output_dir. If that run is over, delete the lock "
                    "file."
                )
            logger.warning("Taking over the stale lock %s of a run that is no longer running (%s)", self.path,
                           _describe(holder))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        handle.flush()
        os.fsync(handle.fileno())
        self.handle = handle

    def _lock(self, handle) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(handle) or {"unreadable": ""}
            raise OutputDirLockedError(
                f"{os.path.dirname(self.path)} is being written by another run ({_describe(holder)}; lock file "
                f"{self.path}). Wait for it, or use another --output_dir."
            ) from None

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _pid_running(holder["pid"]) or (fcntl is not None and holder["pid"] != os.getpid())
        return False  # another host's run (or an unreadable record): this host cannot tell whether it still runs

    def release(self) -> None:
        if self.handle is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # removed while still locked: a waiting run re-checks the inode and locks anew
        self.handle.close()
        self.handle = None


@contextlib.contextmanager
def output_dir_lock(output_dir, enabled: bool = True):
    """Hold the output folder's lock for the `with` block (`enabled=False`: a non-main process, which writes only
    into folders its main process locked)."""
    if not enabled:
        yield None
        return
    lock = OutputDirLock(output_dir)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
