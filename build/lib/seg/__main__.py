"""``python -m seg ...``: see ``seg.cli``."""

from seg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
