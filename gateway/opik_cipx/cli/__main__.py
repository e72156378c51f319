"""``python -m opik_cipx.cli``: what the daemon and the tests run when not frozen."""

from . import main

raise SystemExit(main())
