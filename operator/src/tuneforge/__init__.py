"""Tuneforge operator: FineTuneJob and ModelServe custom resources reconciled with Kopf.

The package owns the operator side only; it imports nothing from the trainer except its light
config module (``tuneforge_trainer.config``), in the one test that checks the contract.
"""

GROUP = "tuneforge.dev"
VERSION = "v1alpha1"
FTJ_PLURAL = "finetunejobs"
MS_PLURAL = "modelserves"

LABEL_FTJ = f"{GROUP}/finetunejob"
LABEL_REVISION = f"{GROUP}/revision"
LABEL_ROLE = f"{GROUP}/role"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
