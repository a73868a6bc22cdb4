#!/usr/bin/env bash
# Prints the path of the project's host virtualenv, creating it first when needed.
# The venv lives outside the work tree, keyed by a hash of every requirements file
# and the Python version, so fresh clones (CI) reuse it and a pin change makes a new one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}
key=$( (python3 --version; cat "$root"/requirements-dev.txt "$root"/trainer-image/requirements.txt "$root"/operator/requirements.txt) | sha256sum | cut -c1-12)
venv=$cache/venv/$key
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  mkdir -p "$cache/venv"
  echo "Creating virtualenv $venv (first run on this machine: several minutes)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$root/requirements-dev.txt" >&2
  touch "$venv/.complete"
  # Old venvs of earlier pins are removed so the cache stays bounded.
  find "$cache/venv" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
fi
echo "$venv"
