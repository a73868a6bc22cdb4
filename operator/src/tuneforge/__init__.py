"""Tuneforge operator: FineTuneJob and ModelServe custom resources reconciled with Kopf.

The package owns the operator side only; from the trainer it takes only data definitions: the
progress events (``trainer_events``, a symlink to ``tuneforge_trainer/events.py``, standard
library only, copied into the image) and, in the test that checks the contract, the light config
module (``tuneforge_trainer.config``).
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
