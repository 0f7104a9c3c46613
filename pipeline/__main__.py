"""`python -m pipeline <stage> ...`: delegates to the CLI."""
from pipeline.cli import main

raise SystemExit(main())
