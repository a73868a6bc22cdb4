"""The FineTuneJob room: a fine-tuning run, revision by revision, as validation and training Jobs.

Shape, arrows one way: ``handlers`` (Kopf) → ``reconcile`` (observe, write through the API door)
→ pure ``status`` / ``plan`` / ``gate`` / ``progress`` / ``results`` → pure ``builders`` and the
``spec`` types (``trainer_config`` renders the trainer's config; ``trainer_events`` is the
trainer's own event definitions). It shares only the runtime (the one start-up, API door, settings,
metrics) and the entry point with the ModelServe room, and never imports it.
"""

from .. import GROUP
from ..labels import LABEL_ROLE

LABEL_FTJ = f"{GROUP}/finetunejob"
LABEL_REVISION = f"{GROUP}/revision"
# A request to run a Failed revision again (``kubectl annotate ftj NAME tuneforge.dev/retry=2
# --overwrite``): each new value is one request; status.retryRequest records the last one handled.
ANNOTATION_RETRY = f"{GROUP}/retry"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
