"""Where the repository and its model folders are: the one place that knows.

Relative paths in configs (``models/rrr-tiny``, ``serve_config.yaml``) are relative to ``REPO``,
wherever the process that reads them runs (a Ray replica, a job, a test).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
"""The checkout (or installed tree) rrr-ray runs from."""
MODELS = REPO / "models"
"""The model folders: the committed test models, and those ``make install`` builds."""


def resolve(path: str) -> str:
    """A path relative to ``REPO`` when it names something there; otherwise ``path`` as given
    (absolute, or a hub id such as mistralai/Mistral-7B-Instruct-v0.3)."""
    p = Path(path)
    if p.is_absolute() or not (REPO / p).exists():
        return path
    return str(REPO / p)
