"""`python -m pipeline.bench samplers|train|fid|gmm|precision [args]`."""
from pipeline.bench import main

raise SystemExit(main())
