"""Faults to inject around a running milter: a small file system that can fill up or go
read-only, and a second SQLite writer that holds the lock.

- :class:`Tmpfs` mounts a size-limited tmpfs (root only) on a fresh directory; ``fill()``
  writes a filler file until the file system is full, ``drain()`` removes it,
  ``readonly()``/``readwrite()`` remount it. ``close()`` unmounts (lazily if something
  still holds it open) and removes the directory; also done at interpreter exit.
- :func:`immutable` makes files read-only even for root (``chattr +i``, on ext4 and the
  like: an already open descriptor fails too), until the ``with`` block ends.
- :func:`hold_write_lock` holds SQLite's write lock on a database from another
  connection (``BEGIN IMMEDIATE`` plus a write) for as long as the ``with`` block runs:
  the milter's writer then sees "database is locked" once its busy timeout expires.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

_MOUNTED: set[Path] = set()


class Tmpfs:
    """A tmpfs of ``size`` (mount(8) syntax, e.g. ``"1m"``) on a new directory."""

    def __init__(self, size: str = "1m", *, prefix: str = "hdm-tmpfs-") -> None:
        if os.geteuid() != 0:
            raise PermissionError("mounting a tmpfs needs root (the e2e suite runs as root)")
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.filler = self.path / ".filler"
        _run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
              str(self.path)])
        _MOUNTED.add(self.path)

    def fill(self) -> int:
        """Write zeros until ENOSPC; returns the bytes written (the fs is then full)."""
        written = 0
        with self.filler.open("ab", buffering=0) as fh:
            for size in (65536, 4096, 1):        # big steps, then the last block exactly
                chunk = b"\0" * size
                while True:
                    try:
                        n = fh.write(chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    written += n or 0
                    if not n:
                        break
        return written

    def drain(self) -> None:
        """Free the space taken by :meth:`fill`."""
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def readonly(self) -> None:
        _run(["mount", "-o", "remount,ro", str(self.path)])

    def readwrite(self) -> None:
        _run(["mount", "-o", "remount,rw", str(self.path)])

    def close(self) -> None:
        if self.path in _MOUNTED:
            _MOUNTED.discard(self.path)
            _umount(self.path)
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Tmpfs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")


def _umount(path: Path) -> None:
    proc = subprocess.run(["umount", str(path)], capture_output=True, timeout=30,
                          check=False)
    if proc.returncode != 0:       # still busy (a process holds a file): detach it
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30,
                       check=False)


@atexit.register
def _unmount_all() -> None:
    for path in list(_MOUNTED):
        _umount(path)


@contextlib.contextmanager
def hold_write_lock(database: str | Path) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock (another process's long transaction) until exit."""
    conn = sqlite3.connect(str(database), timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE IF NOT EXISTS _hdm_fault_lock (x)")
        conn.execute("INSERT INTO _hdm_fault_lock VALUES (1)")
        yield conn
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()


@contextlib.contextmanager
def immutable(*paths: str | Path) -> Iterator[list[Path]]:
    """``chattr +i`` on the paths that exist (root cannot write them any more, not even
    through a descriptor opened before), ``chattr -i`` on exit whatever happens."""
    done: list[Path] = []
    try:
        for p in map(Path, paths):
            if p.exists():
                _run(["chattr", "+i", str(p)])
                done.append(p)
        yield done
    finally:
        for p in reversed(done):
            subprocess.run(["chattr", "-i", str(p)], capture_output=True, timeout=30,
                           check=False)
