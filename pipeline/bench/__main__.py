"""`python -m pipeline.bench samplers|train|fid [args]`."""
from pipeline.bench import main

raise SystemExit(main())
