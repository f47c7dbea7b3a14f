"""Studies built on the engine: attribution along training, the loss kernel, per-token classes, sweeps, scaling,
the suites and the regression check."""
