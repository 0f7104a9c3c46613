"""The stage drivers: one module per pipeline stage (prepare-data, train, train-classifier,
exact-map, sample, ref-stats/fid, aggregate), with the model sources (checkpoint) and the feature
spaces (features) they share. They read the validated configuration (`pipeline.config`), compute
with `pipeline.core` and report with `pipeline.report`."""
