#!/bin/sh
# A virtual environment for the Python worker library (workers/python) and its
# tests: made once in target/python-venv, with the library installed editable,
# pytest, mypy and ruff, the example's scikit-learn and the OpenAI SDK the
# OpenAI API's tests use; nats-py at the version workers/python/constraints.txt
# pins. Prints the environment's python.
set -eu
cd "$(dirname "$0")/.."
venv=target/python-venv
if [ ! -x "$venv/bin/python" ]; then
  # System packages stay visible: a machine that has numpy or scikit-learn
  # already does not download them again.
  python3 -m venv --system-site-packages "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -c workers/python/constraints.txt -e 'workers/python[test,examples]' \
  -r e2e/tests/clients/requirements.txt >&2
echo "$PWD/$venv/bin/python"
