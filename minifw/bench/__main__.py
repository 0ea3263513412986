"""``python -m minifw.bench``: the same as ``minifw bench``."""

from minifw.bench.cli import main

raise SystemExit(main())
