"""``python -m app_kernel``: the same as the ``app-kernel`` command."""

from app_kernel.cli import main

raise SystemExit(main())
