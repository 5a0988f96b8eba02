"""``python -m classifier ...``: see ``classifier.cli``."""

from __future__ import annotations

from classifier.cli import main

raise SystemExit(main())
