"""One run per output folder: an exclusive lock file, ``OUT/.ches.lock``, held for the whole run.

The lock is ``fcntl.flock`` on the lock file, not the ``filelock`` package nor ``O_EXCL`` alone:

- the kernel releases a ``flock`` when its holder dies in any way (SIGKILL, a crash, the OOM
  killer), so a lock can never outlive its run, and no pid check can be fooled by a reused pid;
- the file records who holds it (pid, host, command, start time) so that a second run can name
  the holder; ``filelock`` opens its lock file with ``O_TRUNC`` on every attempt, which would
  erase that record each time a second run tried.

A lock file whose ``flock`` is free but which still names a holder was left by a run that
died; it is taken over with a note. On a filesystem without ``flock`` (some network or FUSE
mounts) the record alone decides: a holder whose pid is gone on this host is stale. Readers
(``ches filter``/``report`` opening a score folder) never lock; they refuse a folder whose
writer is still running (:func:`live_holder`).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ches_filter.errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".ches.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a folder's lock, as its lock file says."""

    pid: int | None
    host: str | None
    command: str | None
    started: str | None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        if self.host:
            who += f" on {self.host}"
        details = [d for d in (self.command and f"`{self.command}`",
                               self.started and f"since {self.started}") if d]
        return who + (f" ({', '.join(details)})" if details else "")

    def gone(self) -> bool:
        """The holder ran on this host and its process no longer exists."""
        if self.pid is None or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def _parse(text: str) -> Holder | None:
    try:
        data: Any = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    return Holder(
        pid=pid if isinstance(pid, int) else None,
        host=data.get("host") if isinstance(data.get("host"), str) else None,
        command=data.get("command") if isinstance(data.get("command"), str) else None,
        started=data.get("started") if isinstance(data.get("started"), str) else None,
    )


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def read_holder(folder: Path | str) -> Holder | None:
    """The holder recorded in ``folder/.ches.lock`` (None: no lock file, or an empty one)."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return _parse(text) if text.strip() else None


def _is_us(holder: Holder | None) -> bool:
    return holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname()


def live_holder(folder: Path | str) -> Holder | None:
    """The other run holding ``folder``'s lock now, or None when none does (this process
    holding it counts as none); the lock is not taken."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _parse(_read_fd(fd))
                return None if _is_us(holder) else holder or Holder(None, None, None, None)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
        holder = _parse(_read_fd(fd))  # no flock here: the record decides
        return holder if holder is not None and not holder.gone() and not _is_us(holder) else None
    finally:
        os.close(fd)


def busy_error(folder: Path, holder: Holder) -> OutputError:
    return OutputError(
        f"{folder} is in use by another ches run: {holder.describe()}",
        hint="wait for it to finish, or choose another output folder",
    )


class FolderLock:
    """The exclusive lock on one output folder (see the module's docstring).

    ``with FolderLock.acquire(folder, command=...):`` creates the folder if needed, takes the
    lock or raises an OutputError naming the holder, and releases it (removing the lock file)
    on exit, whatever the exit.
    """

    def __init__(self, folder: Path, fd: int, *, flocked: bool) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: int | None = fd
        self._flocked = flocked

    @classmethod
    def acquire(
        cls, folder: Path | str, *, command: str | None = None, log: Any = None
    ) -> FolderLock:
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {folder}: {exc.strerror}") from None
        path = folder / LOCK_NAME
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot create the lock file {path}: {exc.strerror}") from None
            flocked = fcntl is not None
            if flocked:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _parse(_read_fd(fd)) or Holder(None, None, None, None)
                    os.close(fd)
                    raise busy_error(folder, holder) from None
                except OSError as exc:
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                        os.close(fd)
                        raise
                    flocked = False
            # A holder that releases unlinks the file: make sure ours is still the one named.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            text = _read_fd(fd)
            previous = _parse(text) if text.strip() else None
            if previous is not None and not flocked and not previous.gone():
                os.close(fd)
                raise busy_error(folder, previous)
            if previous is not None and previous.pid != os.getpid() and log is not None:
                log(f"note: took over the lock of {folder} left by {previous.describe()}, "
                    "which is no longer running")
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": command if command is not None else " ".join(sys.argv),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
            return cls(folder, fd, flocked=flocked)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: no one else can be there
        finally:
            os.close(fd)  # drops the flock

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
