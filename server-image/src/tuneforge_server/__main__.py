"""``python -m tuneforge_server``: the launcher CLI."""

import sys

from tuneforge_server.cli import main

sys.exit(main())
