#!/bin/sh
# A virtual environment for the Python worker library (workers/python) and its
# tests: made once in target/python-venv, with the library installed editable,
# pytest and the example's scikit-learn. Prints the environment's python.
set -eu
cd "$(dirname "$0")/.."
venv=target/python-venv
if [ ! -x "$venv/bin/python" ]; then
  # System packages stay visible: a machine that has numpy or scikit-learn
  # already does not download them again.
  python3 -m venv --system-site-packages "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -e 'workers/python[test,examples]' >&2
echo "$PWD/$venv/bin/python"
