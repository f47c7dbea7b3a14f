"""The engine: one pipeline that every entry point calls — specs, ground truth and its store, reference models,
executors, stored scores, records, fingerprints, verification and reproduction."""
