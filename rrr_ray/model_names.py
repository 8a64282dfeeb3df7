"""The names of the models rrr-ray builds and serves by default (their folders under ``models/``).

Below ``data`` and ``training`` so that both can name the default without importing each other.
"""

ADAPTER_NAME = "rrr-smollm2-lora"
"""The committed RRR LoRA adapter for SmolLM2-135M-Instruct (``jobs.train_default_model`` trains it)."""
MERGED_NAME = "rrr-smollm2"
"""The base with the adapter merged (``jobs.prepare_models``): the model ``make serve`` serves."""
