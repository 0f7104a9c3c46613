"""The numerical core: noise schedules and time-step spacings, the samplers (one registry), the
exact-score data (Gaussian, Gaussian mixture), intervals and the U-Net. Imports only
`pipeline.util` and itself: no files of the pipeline, no configuration."""
