"""Side-by-side benchmark, one run, same model and prompts: engine vs rrr-ray graph vs seed-style server.

    python -m loadtest.compare --model models/rrr-tiny --rounds 5 --output out/compare [--serve-url URL]

Systems, all with the same chat prompts, greedy decoding and a fixed ``--max-tokens`` with
``ignore_eos`` so that every request yields the same number of tokens, each level a closed loop
(N clients issue requests back to back, as ``vllm bench serve --max-concurrency``):

* **a / engine**: vLLM ``AsyncLLM`` in-process (:mod:`loadtest.engine_bench --interactive`, a
  subprocess that keeps its engine up): the limit;
* **b / serve**: the rrr-ray Serve graph over HTTP, streaming ``POST /generate`` (NDJSON). Given by
  ``--serve-url`` of a running graph, else started with ``deployments.launch``;
* **c / seed**: :mod:`loadtest.seed_server` (FastAPI + transformers ``generate`` +
  ``TextIteratorStreamer``, as the seed's ``simple_api.py``), its own process on a free port.

(a) and (b) are up together and measured in pairs: every round runs each level on (a) and on (b)
back to back, seconds apart, (a) first in odd rounds and (b) first in even ones, so that the
machine's drift (large on shared cores) falls on both sides of each ratio. Only one of them works
at a time; the other idles (on a single GPU, give each half the memory, or run them apart with
``--skip``). Each block starts with ``c`` unmeasured requests (connections open, engine warm) and
runs ``max(96, 40 c)`` measured requests unless ``--requests-per-level`` says otherwise, so that
the ramp-up and the tail of a closed loop weigh little against its steady state. (c) runs once,
alone, afterwards (at most 96 requests per level: it is slow).

``--placements deployment,ingress`` measures the graph's two shapes one after the other, each
paired with the same (a): every stage in a deployment of its own (ingress -> post-processor ->
model, two Ray hops each way), and every stage inside the ingress replica.

Writes ``compare.json``: per shape (``shapes``; the first shape's figures also at the top level)
``throughput_ratio_vs_engine_c16`` and ``_c64`` (b/a output tok/s), ``ttft_overhead_ms_p50_c1``
(b minus a, TTFT p50 at 1), ``ttft_ratio_vs_engine_c16`` (b/a TTFT p50), ``throughput_ratio_vs_seed_c16``
(b/c), from the round with the median b/a at the highest level, every round's figures, the
targets (``TARGETS``) and whether they hold, and every system's full
:func:`loadtest.metrics.summarize` per level, with, for (b), where its TTFT went
(``ttft_breakdown_ms``: HTTP, Ray hops and post-processing, model stage); prints a table per shape.

Modules: :mod:`~loadtest.compare.systems` starts and drives the three systems,
:mod:`~loadtest.compare.measure` runs a level and the paired rounds, :mod:`~loadtest.compare.report`
computes the ratios and the table, :mod:`~loadtest.compare.main` is the command.
"""
