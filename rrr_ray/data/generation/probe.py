"""Endpoint probing before a run: a bad key, an unreachable endpoint or an unknown model fails fast."""

from __future__ import annotations

import random

from rrr_ray.data.generation.client import EndpointClient, run_sync
from rrr_ray.data.generation.config import GenerationConfig
from rrr_ray.data.generation.errors import EndpointError, GenerationError, RequestRejected

PROBE_TIMEOUT_S = 30.0


async def served_models(cfg: GenerationConfig) -> list[str]:
    """The model ids served at ``cfg.base_url``, with the job's retries."""
    client = EndpointClient(cfg, timeout=min(cfg.request_timeout, PROBE_TIMEOUT_S))
    try:
        return await client.model_ids(random.Random(cfg.seed))
    finally:
        await client.close()


def check_endpoint(cfg: GenerationConfig) -> None:
    """Fail fast, with one clear line, on a bad key, an unreachable endpoint or an unknown model."""
    model = cfg.resolved_model()
    try:
        served = run_sync(served_models(cfg))
    except RequestRejected as exc:
        raise GenerationError(f"unexpected HTTP {exc.status} from {cfg.base_url}/models") from None
    except EndpointError as exc:
        raise GenerationError(exc.describe()) from None
    if served and model not in served:
        raise GenerationError(f"model {model!r} is not served at {cfg.base_url}; it serves: {', '.join(served[:10])}")
