"""Entry point for ``python -m tuneforge_localcluster``."""

from tuneforge_localcluster.cli import main

raise SystemExit(main())
