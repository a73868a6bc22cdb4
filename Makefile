# Tuneforge developer entry points. Every target installs what it needs itself:
# the host virtualenv, Go binaries, images and the model are cached outside the
# work tree (under $(TUNEFORGE_CACHE), default ~/.cache/tuneforge), keyed by their inputs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export TUNEFORGE_CACHE ?= $(HOME)/.cache/tuneforge
export PYTHONPATH := $(CURDIR)/operator/src:$(CURDIR)/trainer-image/src:$(CURDIR)/server-image/src:$(CURDIR)/localcluster/src
VENV = $(shell hack/venv.sh)
PY = $(VENV)/bin/python
LOCALCLUSTER = $(PY) -m tuneforge_localcluster

.PHONY: help venv test test-fast demo bench cluster-up cluster-down cluster-status model images lint chart

help:
	@echo "make demo           run the main job end to end on the local cluster"
	@echo "make test           run every test (starts and stops the local cluster)"
	@echo "make test-fast      pure unit tests only (no cluster, no training)"
	@echo "make bench          run the benchmarks in bench/ and print their figures"
	@echo "make cluster-up     start the local cluster; kubeconfig at .cluster/kubeconfig"
	@echo "make cluster-down   stop every process of the local cluster and clean up"
	@echo "make cluster-status show what the local cluster runs"
	@echo "make chart          regenerate what charts/tuneforge derives from crds/ and settings.py"

venv:
	@echo $(VENV)

# Three passes over the same tests, partitioned by marker (each test runs in exactly one):
#  - the pure tier, in the foreground;
#  - beside it, the slow tests that need no cluster (the trainer's real-model runs, vLLM on the
#    host), CPU-bound, while the pure tier and the first cluster tests mostly wait; their output
#    goes to test-output/slow-tier.log and is printed when they end;
#  - then everything that needs the cluster, started right after the pure tier without waiting
#    for the background prefetch (hack/prefetch.py: Go binaries, images, model, venvs): what it
#    has not finished yet, a test waits for through its per-binary and per-image locks. The
#    cluster itself is started here first unless it is up (no test timeout around it): on a machine with
#    empty caches it waits for the control plane's Go builds, longer than a test's timeout, and a
#    cluster fixture that started it inside the first test's setup timed the whole group out.
# The exit status is non-zero when any pass failed. Prefetch seconds: test-output/prefetch.json;
# the passes' reports are merged into test-output/junit.xml.
test:
	@mkdir -p test-output && rm -f test-output/junit*.xml
	@set -u; nice -n 5 $(PY) hack/prefetch.py > test-output/prefetch.log 2>&1 & prefetch=$$!; \
	$(PY) -m pytest tests -m "slow and not cluster" --durations=15 --junitxml=test-output/junit-slow.xml \
	  > test-output/slow-tier.log 2>&1 & slow=$$!; \
	$(PY) -m pytest tests -m "not cluster and not slow" --durations=15 --junitxml=test-output/junit-pure.xml; pure=$$?; \
	keep=$${TUNEFORGE_KEEP_CLUSTER:-}; \
	if $(LOCALCLUSTER) status --quiet; then keep=1; else $(LOCALCLUSTER) up > test-output/cluster-up.log 2>&1 \
	  || { echo "The cluster did not start (test-output/cluster-up.log):"; tail -30 test-output/cluster-up.log; }; fi; \
	TUNEFORGE_KEEP_CLUSTER=1 $(PY) -m pytest tests -m "cluster and not slow and not exclusive" --durations=15 \
	  --junitxml=test-output/junit-cluster-beside.xml > test-output/cluster-beside.log 2>&1 & beside=$$!; \
	TUNEFORGE_KEEP_CLUSTER=1 $(PY) -m pytest tests -m "cluster and (slow or exclusive)" --durations=15 \
	  --junitxml=test-output/junit-cluster.xml; cluster=$$?; \
	wait $$beside; besiderc=$$?; echo "== cluster tests beside the slow ones (test-output/cluster-beside.log)"; \
	tail -40 test-output/cluster-beside.log; \
	[ "$$keep" = 1 ] || $(LOCALCLUSTER) down; \
	wait $$slow; slowrc=$$?; echo "== slow tests without the cluster (test-output/slow-tier.log)"; \
	tail -40 test-output/slow-tier.log; \
	wait $$prefetch || { echo "The background prefetch failed (the tests built what was missing):"; tail -20 test-output/prefetch.log; }; \
	$(PY) hack/junit_merge.py test-output/junit.xml test-output/junit-{pure,slow,cluster,cluster-beside}.xml; \
	[ $$pure -eq 0 ] && [ $$cluster -eq 0 ] && [ $$besiderc -eq 0 ] && [ $$slowrc -eq 0 ]

test-fast:
	$(PY) -m pytest tests -m "not cluster and not slow"

demo:
	$(PY) hack/demo.py

bench:
	@# Every script with a main; banking77_common.py is their shared module.
	@set -e; for b in $$(grep -l "^if __name__ ==" bench/*.py); do echo "== $$b"; $(PY) $$b; done

cluster-up:
	$(LOCALCLUSTER) up

cluster-down:
	$(LOCALCLUSTER) down

cluster-status:
	$(LOCALCLUSTER) status

model:
	$(PY) hack/prepare_model.py

chart:
	$(PY) hack/sync_chart.py

lint:
	$(PY) -m mypy operator/src/tuneforge trainer-image/src/tuneforge_trainer server-image/src/tuneforge_server localcluster/src/tuneforge_localcluster
