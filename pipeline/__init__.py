"""ddbench: a reproducible speed-quality benchmark pipeline for diffusion samplers."""

__version__ = "0.1.0"
