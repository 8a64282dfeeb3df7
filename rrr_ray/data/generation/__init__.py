"""Synthetic RRR dialogue generation, fanned out over Ray against any OpenAI-compatible endpoint.

Modules: ``topics`` (seed user lines), ``config`` (``GenerationConfig``), ``plan`` (what dialogue
``i`` is), ``prompts`` (the chat messages), ``errors`` (exception classes), ``client`` (requests
and their retries), ``probe`` (endpoint check), ``dialogue`` (one dialogue), ``state`` (the output
folder and resuming), ``executors`` (Ray or local), ``run`` (the job) and ``cli`` (its options).
"""

from rrr_ray.data.generation.client import EndpointClient, backoff_delay
from rrr_ray.data.generation.config import (
    DEFAULT_BASE_URL, DEFAULT_EXAMPLES, DEFAULT_MODEL, OPENAI_MODEL, GenerationConfig, is_openai,
)
from rrr_ray.data.generation.dialogue import DialogueGenerator, DialogueResult
from rrr_ray.data.generation.errors import (
    AuthError, BadReply, DialogueRejected, EndpointError, EndpointUnreachable, GenerationError, ModelNotFound,
    RateLimited, RequestRejected, ServerError, TransientStatus, endpoint_error,
)
from rrr_ray.data.generation.executors import GeneratorActor, LocalExecutor, RayExecutor
from rrr_ray.data.generation.plan import DialoguePlan, ExampleRotation, conversation_id, load_examples, plan_dialogue
from rrr_ray.data.generation.probe import check_endpoint
from rrr_ray.data.generation.prompts import format_description, turn_messages, whole_messages
from rrr_ray.data.generation.run import GenerationSummary, run_generation
from rrr_ray.data.generation.state import (
    SHARD_RE, STATE_DIR, OutputState, ShardWriter, prepare_output, read_output_state, shard_paths,
)
from rrr_ray.data.generation.topics import GENERIC_FOLLOWUPS, TOPICS

__all__ = [
    "AuthError", "BadReply", "DEFAULT_BASE_URL", "DEFAULT_EXAMPLES", "DEFAULT_MODEL", "DialogueGenerator",
    "DialoguePlan", "DialogueRejected", "DialogueResult", "EndpointClient", "EndpointError", "EndpointUnreachable",
    "ExampleRotation", "GENERIC_FOLLOWUPS", "GenerationConfig", "GenerationError", "GenerationSummary",
    "GeneratorActor", "LocalExecutor", "ModelNotFound", "OPENAI_MODEL", "OutputState", "RateLimited", "RayExecutor",
    "RequestRejected", "SHARD_RE", "STATE_DIR", "ServerError", "ShardWriter", "TOPICS", "TransientStatus",
    "backoff_delay", "check_endpoint", "conversation_id", "endpoint_error", "format_description", "is_openai",
    "load_examples", "plan_dialogue", "prepare_output", "read_output_state", "run_generation", "shard_paths",
    "turn_messages", "whole_messages",
]
