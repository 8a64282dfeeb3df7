"""The benchmark of served RRR models: generation through an OpenAI-compatible endpoint, format
compliance, reference metrics, an optional judge, bootstrap confidence intervals, report and plots
(``python -m jobs.benchmark``)."""
