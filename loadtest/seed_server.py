"""The seed-style baseline server: FastAPI + transformers ``generate`` + ``TextIteratorStreamer``.

    python -m loadtest.seed_server --model models/rrr-tiny --port 8123

What the seed's ``simple_api.py`` did, kept on purpose (it is the "before" of the benchmark): one
``model.generate`` per request on a background thread, text streamed through a
``TextIteratorStreamer``, no batching across requests. It speaks the same streaming contract as
the rrr-ray graph's ``POST /generate`` (NDJSON lines ``{"token", "finished": false}`` then a last
``{"token": "", "finished": true, "metadata": {...}}``), so the same client measures both.
``ignore_eos: true`` forces exactly ``max_new_tokens`` tokens (``min_new_tokens``), so that token
counts match the engine's.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from pydantic import BaseModel, Field


class Message(BaseModel):
    role: str
    content: str


class GenerateRequest(BaseModel):
    prompt: str | None = None
    messages: list[Message] | None = None
    system: str | None = None
    max_new_tokens: int = Field(64, ge=1, le=4096)
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stream: bool = False
    ignore_eos: bool = False
    model: str | None = None


def create_app(model_path: str, max_threads: int | None = None):
    import torch
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse, StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    if max_threads:
        torch.set_num_threads(max_threads)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    name = model_path.rstrip("/").split("/")[-1]
    app = FastAPI(title="seed-style baseline")

    def build_inputs(req: GenerateRequest):
        if req.messages:
            msgs = [m.model_dump() for m in req.messages]
        elif req.prompt is not None:
            msgs = [{"role": "user", "content": req.prompt}]
        else:
            raise HTTPException(422, "one of prompt or messages is required")
        if req.system:
            msgs = [{"role": "system", "content": req.system}] + msgs
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        return ids

    def gen_kwargs(req: GenerateRequest) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": req.max_new_tokens, "repetition_penalty": req.repetition_penalty,
                              "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id}
        if req.temperature and req.temperature > 0:
            kw.update(do_sample=True, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k if req.top_k > 0 else None)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if req.ignore_eos:
            kw["min_new_tokens"] = req.max_new_tokens
        return kw

    @app.get("/health")
    def health():
        return {"status": "ok", "model": name}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model"}]}

    @app.post("/generate")
    def generate(req: GenerateRequest):
        inputs = build_inputs(req)
        n_in = int(inputs["input_ids"].shape[1])
        kw = gen_kwargs(req)
        t0 = time.perf_counter()
        if not req.stream:
            with torch.inference_mode():
                out = model.generate(**inputs, **kw)
            new = out[0, n_in:]
            dt = time.perf_counter() - t0
            return JSONResponse({
                "text": tokenizer.decode(new, skip_special_tokens=True),
                "metadata": _meta(n_in, int(new.shape[0]), dt, None),
            })

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    out = model.generate(**inputs, **kw, streamer=streamer)
                result["n_out"] = int(out.shape[1]) - n_in
            except Exception as exc:  # surfaced as the stream's error line
                result["error"] = f"{type(exc).__name__}: {exc}"
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def lines():
            ttft = None
            for text in streamer:
                if not text:
                    continue
                if ttft is None:
                    ttft = time.perf_counter() - t0
                yield json.dumps({"token": text, "finished": False}) + "\n"
            thread.join()
            if "error" in result:
                yield json.dumps({"finished": True, "error": result["error"]}) + "\n"
                return
            dt = time.perf_counter() - t0
            yield json.dumps({"token": "", "finished": True,
                              "metadata": _meta(n_in, result.get("n_out", 0), dt, ttft)}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app


def _meta(n_in: int, n_out: int, dt: float, ttft: float | None) -> dict[str, Any]:
    return {
        "input_tokens": n_in,
        "output_tokens": n_out,
        "inference_time_seconds": dt,
        "tokens_per_second": n_out / dt if dt > 0 else 0.0,
        "time_to_first_token_seconds": ttft,
    }


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/rrr-tiny")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    app = create_app(args.model, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
