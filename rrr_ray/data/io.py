"""Safe file writes: atomic replacement and timestamped backups.

Every writer of dialogue data goes through here, so a crash never leaves a half-written file:
the content is written to a temporary file in the same folder, flushed to disk, then moved over
the target with ``os.replace`` (atomic on POSIX). Folders are swapped in one step where the
platform can (``renameat2(RENAME_EXCHANGE)`` on Linux). A backup folder appears only once complete,
with a manifest of where each file came from and its SHA-256.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

log = logging.getLogger(__name__)

MANIFEST = ".manifest.json"
"""File of a backup folder recording, per file, its original path and SHA-256, and the absent paths."""


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
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames, new and removed files) to disk, where the platform can."""
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


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk (before renaming it into place)."""
    for root, _dirs, names in os.walk(folder):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # pragma: no cover - not glibc / not Linux
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # pragma: no cover
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(src: Path, dst: Path) -> None:
    """Move the folder ``src`` to ``dst``, replacing an existing ``dst`` so that a crash at any
    moment leaves ``dst`` either old or new, never missing (where ``renameat2`` exists; elsewhere
    :func:`recover_dir` puts the old one back)."""
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.replace(src, dst)
    elif _exchange(src, dst):
        if src.is_dir() and not src.is_symlink():  # src now holds the old version
            shutil.rmtree(src)
        else:
            src.unlink()
    else:  # pragma: no cover - two renames; recover_dir mends the gap between them
        old = _old_dir(dst)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dst.parent)


def _old_dir(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.old")


def recover_dir(dst: Path) -> None:
    """Undo a :func:`replace_dir` interrupted between its two renames (platforms without ``renameat2``)."""
    dst = Path(dst)
    old = _old_dir(dst)
    if old.is_dir() and not dst.exists():
        log.warning("%s: putting back the previous version after an interrupted replace", dst)
        os.replace(old, dst)


def timestamp() -> str:
    """A sortable UTC timestamp with microseconds, usable in file names."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def backup_files(paths: Iterable[Path], backup_root: Path, label: str = "", base: Optional[Path] = None) -> Path:
    """Copy every existing file of ``paths`` into a new ``backup_root/<timestamp>[-label]/`` folder.

    Returns the backup folder (created even when none of the files exist yet, so that each change
    leaves a trace). Files keep their names; the copy is made before the caller changes anything.
    The folder is filled under a hidden name and renamed when complete, so a crash leaves no partial
    backup. Its :data:`MANIFEST` records each file's path (relative to ``base`` if given) and
    SHA-256, and the paths that did not exist.
    """
    backup_root = Path(backup_root)
    backup_root.mkdir(parents=True, exist_ok=True)
    stamp = timestamp() + (f"-{label}" if label else "")
    staging = Path(tempfile.mkdtemp(prefix=f".{stamp}.", suffix=".partial", dir=backup_root))
    manifest: dict = {"files": [], "absent": []}
    try:
        for p in map(Path, paths):
            where = p.relative_to(base).as_posix() if base is not None else str(p.resolve())
            if not p.is_file():
                manifest["absent"].append(where)
                continue
            if (staging / p.name).exists():
                raise ValueError(f"two files named {p.name} in one backup")
            data = p.read_bytes()
            _write_synced(staging / p.name, data)
            shutil.copystat(p, staging / p.name)
            manifest["files"].append({"name": p.name, "path": where, "sha256": sha256(data)})
        _write_synced(staging / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        fsync_dir(staging)
        folder, n = backup_root / stamp, 1
        while folder.exists():  # two changes in the same microsecond
            folder, n = backup_root / f"{stamp}-{n}", n + 1
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(backup_root)
    log.info("backup written to %s", folder)
    return folder


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def backup_file(path: Path, backup_root: Path | None = None) -> Path | None:
    """Back up one file next to itself (``.backups/<timestamp>/name``); None if it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    root = backup_root if backup_root is not None else path.parent / ".backups"
    return backup_files([path], root) / path.name
