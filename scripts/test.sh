#!/usr/bin/env bash
# The test command of the README: set up .venv if needed (CPU torch first), then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0   # CPU wheel before anything asks for torch
pip install -q -e '.[test,lm,ray,triton]'   # lm: transformers + lm-eval; ray: the Ray executor; triton: kernels (interpreter on CPU)
pip install -q --no-build-isolation natten || echo "natten did not install: its peer tests will skip"
python -m pytest -q -p no:cacheprovider "$@"
