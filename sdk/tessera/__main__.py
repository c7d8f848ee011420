"""`python -m tessera ...` runs the CLI (same as the `tessera` console script)."""

from tessera.cli import main

raise SystemExit(main())
