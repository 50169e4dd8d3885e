"""``python -m elegantviz``: the same as the ``elegantviz`` command."""

from elegantviz.cli import main

raise SystemExit(main())
