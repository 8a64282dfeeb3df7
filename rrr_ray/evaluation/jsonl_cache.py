"""An append-only JSON-lines cache of pydantic records keyed by their ``key`` field: each line is
flushed and fsync'd as it is written, so a crash loses at most the record being written, and a rerun
reads back everything before it (the last line of a key wins; an unreadable line is skipped)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel

log = logging.getLogger(__name__)

Record = TypeVar("Record", bound=BaseModel)


class JsonlCache(Generic[Record]):
    record_type: type[BaseModel]

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, Record] = {}
        if self.path.exists():
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = self.record_type.model_validate_json(line)
                except ValueError:  # a line cut short by a crash: that record is made again
                    log.warning("%s: line %d is unreadable and is ignored", self.path, n)
                    continue
                self.entries[entry.key] = entry  # type: ignore[attr-defined]

    def add(self, entry: Record) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(entry.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[entry.key] = entry  # type: ignore[attr-defined]
