"""Asyncio helpers shared by the stages."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


async def close_quietly(stream: Any) -> None:
    """Close an async iterator if it can be closed; closing a finished or broken stream is
    best-effort, so its error is logged (debug) and dropped."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            logger.debug("closing stream failed", exc_info=True)
