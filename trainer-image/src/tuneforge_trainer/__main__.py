"""``python -m tuneforge_trainer`` runs the ``tuneforge-train`` CLI."""

import sys

from tuneforge_trainer.cli import main

sys.exit(main())
