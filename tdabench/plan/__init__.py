"""Planning: the memory and time of a run's stages before any work (``tdabench plan`` and the check before a
CUDA run), by tracing the code on fake tensors.  Imports api and toolkit."""
