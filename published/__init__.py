"""Published tables (``tdabench.published``): one file per peer's table of numbers."""
