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
#  - the pure tier;
#  - the slow tests that need no cluster (the trainer's real-model runs, vLLM on the host),
#    CPU-bound; both in the background, their output in test-output/ (printed when they end);
#  - everything that needs the cluster, in the foreground (the longest pass: the critical path).
# Order matters on a machine with empty caches, where the first 20 minutes are compilation and
# every core is busy throughout (so what runs first is what finishes first):
#  1. hack/prefetch.py starts first, on the machine's own Python (it needs only the standard
#     library): the cluster's Go binaries, then the images, the model and the venvs at a lower
#     priority (its NICE). The Go builds are the critical path then: the cluster cannot start
#     before the control plane is compiled;
#  2. the host virtualenv (hack/venv.sh; minutes cold, while the Go builds run);
#  3. the pure tier in the background, and the cluster is started in the foreground unless it is
#     up (outside any test's timeout: cold, it waits for the control plane's compilation);
#  4. then the slow tier in the background (started after the cluster so that, cold, its
#     minutes of training do not take the cores from the compilation; warm, that is seconds)
#     and the two cluster passes: what the prefetch has not finished yet (KEDA, Kueue, images),
#     a test waits for through its per-binary and per-image locks.
# The exit status is non-zero when any pass failed. Prefetch seconds: test-output/prefetch.json;
# the passes' reports are merged into test-output/junit.xml.
test:
	@mkdir -p test-output && rm -f test-output/junit*.xml
	@# OMP_WAIT_POLICY: the host's trainings (the slow tier) run beside the node's (as the trainer
	@# image sets it): spinning OpenMP threads of two trainings on 2 cores cost 3x (bench/cpu_sharing.py).
	@set -u; export OMP_WAIT_POLICY=PASSIVE; python3 hack/prefetch.py > test-output/prefetch.log 2>&1 & prefetch=$$!; \
	py=$$(hack/venv.sh)/bin/python || exit 1; lc="$$py -m tuneforge_localcluster"; \
	$$py -m pytest tests -m "not cluster and not slow" --durations=15 --junitxml=test-output/junit-pure.xml \
	  > test-output/pure-tier.log 2>&1 & pure=$$!; \
	echo "== the pure tier (test-output/pure-tier.log) and the cluster's start (test-output/cluster-up.log)"; \
	keep=$${TUNEFORGE_KEEP_CLUSTER:-}; \
	if $$lc status --quiet; then keep=1; else $$lc up > test-output/cluster-up.log 2>&1 \
	  || { echo "The cluster did not start (test-output/cluster-up.log):"; tail -30 test-output/cluster-up.log; }; fi; \
	$$py -m pytest tests -m "slow and not cluster" --durations=15 --junitxml=test-output/junit-slow.xml \
	  > test-output/slow-tier.log 2>&1 & slow=$$!; \
	TUNEFORGE_KEEP_CLUSTER=1 $$py -m pytest tests -m "cluster and not slow and not exclusive" --durations=15 \
	  --junitxml=test-output/junit-cluster-beside.xml > test-output/cluster-beside.log 2>&1 & beside=$$!; \
	TUNEFORGE_KEEP_CLUSTER=1 $$py -m pytest tests -m "cluster and (slow or exclusive)" --durations=15 \
	  --junitxml=test-output/junit-cluster.xml; cluster=$$?; \
	wait $$beside; besiderc=$$?; echo "== cluster tests beside the slow ones (test-output/cluster-beside.log)"; \
	tail -40 test-output/cluster-beside.log; \
	[ "$$keep" = 1 ] || $$lc down; \
	wait $$pure; purerc=$$?; echo "== pure tier (test-output/pure-tier.log)"; tail -25 test-output/pure-tier.log; \
	wait $$slow; slowrc=$$?; echo "== slow tests without the cluster (test-output/slow-tier.log)"; \
	tail -40 test-output/slow-tier.log; \
	wait $$prefetch || { echo "The background prefetch failed (the tests built what was missing):"; tail -20 test-output/prefetch.log; }; \
	$$py hack/junit_merge.py test-output/junit.xml test-output/junit-{pure,slow,cluster,cluster-beside}.xml; \
	[ $$purerc -eq 0 ] && [ $$cluster -eq 0 ] && [ $$besiderc -eq 0 ] && [ $$slowrc -eq 0 ]

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
