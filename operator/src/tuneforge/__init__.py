"""Tuneforge operator: FineTuneJob and ModelServe custom resources reconciled with Kopf.

One room per kind — ``finetune/`` (FineTuneJob) and ``serve/`` (ModelServe), each with its spec,
status, plan, builders and reconcile — and the parts they share at this level: the API door
(``kube``, the only module that imports the Kubernetes client), ``settings``, ``metrics``, the
one start-up (``startup``: Kopf's settings, the login, one ``runtime.Runtime`` with one API
client that both rooms receive; ``runtime`` also holds the one status-write strategy), the work
queue, and the entry point (``main``, ``__main__``), which imports each room's Kopf handlers so
they register and plug into the start-up.
The rooms never import each other (tests/operator/test_operator_layout.py checks it).

The package owns the operator side only; from the trainer it takes only data definitions: the
progress events (``finetune/trainer_events``, a symlink to ``tuneforge_trainer/events.py``,
standard library only, copied into the image) and, in the test that checks the contract, the
light config module (``tuneforge_trainer.config``).
"""

# The API both kinds live in, and their plurals (Kopf's watches and the API door name them).
GROUP = "tuneforge.dev"
VERSION = "v1alpha1"
FTJ_PLURAL = "finetunejobs"
MS_PLURAL = "modelserves"
