"""Toolkits: shared machinery that plug-ins and the engine use — per-example gradients, projections, SGLD, many
models at once, metagradients, the dattri bridge, retraining one model, files and locks, timing.  Imports only api."""
