"""``python -m elevenconv``: the same as the ``elevenconv`` command (see :mod:`elevenconv.cli`)."""

from __future__ import annotations

from elevenconv.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
