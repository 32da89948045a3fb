"""``python -m router.cli``: the ``email-router`` command without the console script."""

from __future__ import annotations

from router.cli import main

raise SystemExit(main())
