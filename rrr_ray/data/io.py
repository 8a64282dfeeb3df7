"""Safe file writes: atomic replacement and timestamped backups.

Every writer of dialogue data goes through here, so a crash never leaves a half-written file:
the content is written to a temporary file in the same folder, flushed to disk, then moved over
the target with ``os.replace`` (atomic on POSIX).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def timestamp() -> str:
    """A sortable UTC timestamp with microseconds, usable in file names."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def backup_files(paths: Iterable[Path], backup_root: Path, label: str = "") -> Path:
    """Copy every existing file of ``paths`` into a new ``backup_root/<timestamp>[-label]/`` folder.

    Returns the backup folder (created even when none of the files exist yet, so that each change
    leaves a trace). Files keep their names; the copy is made before the caller changes anything.
    """
    backup_root = Path(backup_root)
    stamp = timestamp() + (f"-{label}" if label else "")
    folder = backup_root / stamp
    n = 1
    while folder.exists():  # two changes in the same microsecond
        folder = backup_root / f"{stamp}-{n}"
        n += 1
    folder.mkdir(parents=True)
    for p in paths:
        p = Path(p)
        if p.is_file():
            shutil.copy2(p, folder / p.name)
    log.info("backup written to %s", folder)
    return folder


def backup_file(path: Path, backup_root: Path | None = None) -> Path | None:
    """Back up one file next to itself (``.backups/<timestamp>/name``); None if it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    root = backup_root if backup_root is not None else path.parent / ".backups"
    return backup_files([path], root) / path.name
