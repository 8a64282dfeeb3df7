# rrr-ray: the two commands of the README are `make serve` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# Every command runs with the CPU-node environment defined once in rrr_ray/env.py (set values win).
RUN := $(BIN)/python -m rrr_ray.env

.PHONY: install serve test test-fast test-image image image-gpu model model-report model-tiny benchmark bench compare loadtest clean-venv

install:
	@bash scripts/install.sh

serve: install ## install if needed, then serve the default model on 127.0.0.1:8000
	@$(RUN) $(BIN)/python -m rrr_ray.serving.ports serve_config.yaml
	$(RUN) $(BIN)/python -m rrr_ray.graceful serve run serve_config.yaml

test: install ## install if needed, then run the whole test suite
	$(RUN) $(BIN)/python -m pytest tests

test-fast: install ## the unit tests only (no Ray Serve, no vLLM engine)
	$(RUN) $(BIN)/python -m pytest tests -m "not e2e"

test-image: install ## build the CPU image with podman, run it on 127.0.0.1, test it and stop it (tests/test_image.py)
	RRR_TEST_IMAGE=1 $(RUN) $(BIN)/python -m pytest tests/test_image.py

image: ## the CPU image rrr-ray:cpu (podman; Dockerfile, scripts/build-image)
	bash scripts/build-image cpu

image-gpu: ## the GPU image rrr-ray:gpu (vLLM for CUDA, serve_config.gpu.yaml; needs an NVIDIA GPU to run)
	bash scripts/build-image gpu

model: install ## retrain the default's RRR adapter from scratch, merge it, measure it (models/rrr-smollm2-lora); PUBLISH_TO=DIR also serves it unmerged as <base>:rrr
	$(RUN) $(BIN)/python -m jobs.train_default_model
	$(RUN) $(BIN)/python -m jobs.prepare_models
	$(if $(PUBLISH_TO),$(RUN) $(BIN)/python -m jobs.publish_adapter models/rrr-smollm2-lora $(PUBLISH_TO) --name rrr)
	$(MAKE) model-report

model-report: install ## measure the default against its base and the seed: format, coherence, speed (JSON + card)
	$(RUN) $(BIN)/python -m jobs.report_default_model --speed --output models/rrr-smollm2-lora/report.json

model-tiny: install ## rebuild the rrr-tiny test models from scratch (base + fine-tunes, models/rrr-tiny*)
	$(RUN) $(BIN)/python -m jobs.build_tiny_model

benchmark: install ## the evaluation (50 prompts; tuned vs base; unguided, guided, healed) against a running `make serve`
	$(RUN) $(BIN)/python -m jobs.benchmark --endpoint http://127.0.0.1:8000 --models rrr-smollm2,smollm2-135m-instruct \
		--guided both --heal --concurrency 8 --output out/benchmark

bench: install ## format-core throughput benchmark
	$(RUN) $(BIN)/python -m loadtest.bench_format --output out/bench

compare: install ## engine vs the graph's two shapes (5 paired rounds each, median) vs seed-style server (out/compare/compare.json)
	$(RUN) $(BIN)/python -m loadtest.compare --model models/rrr-tiny --placements deployment,ingress --concurrency 1,4,16,64 --rounds 5 --output out/compare

loadtest: install ## Locust at 1, 4 and 16 users against a running `make serve`
	$(RUN) $(BIN)/python -m loadtest.run --host http://127.0.0.1:8000 --users 1,4,16 --duration 60s --output out/load

clean-venv:
	rm -rf $(VENV)
