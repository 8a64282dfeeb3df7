"""Helper run as a subprocess by the e2e tests: load one model folder in vLLM (optionally with a
LoRA adapter) and print the generations as JSON on a line starting with RRR_RESULT."""

import json
import sys

if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    model, adapter = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    llm = LLM(model=model, dtype="bfloat16", max_model_len=1024, enable_lora=adapter is not None,
              max_lora_rank=16, max_loras=1, seed=0)
    params = SamplingParams(max_tokens=160, temperature=0.7, seed=0)
    convs = [[{"role": "user", "content": p}] for p in ("How was your day?", "I feel a bit lost lately.")]
    out = {"base": [o.outputs[0].text for o in llm.chat(convs, params, use_tqdm=False)]}
    if adapter:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("rrr-tiny-lora", 1, adapter)
        out["lora"] = [o.outputs[0].text for o in llm.chat(convs, params, use_tqdm=False, lora_request=lora)]
    print("RRR_RESULT " + json.dumps(out), flush=True)
