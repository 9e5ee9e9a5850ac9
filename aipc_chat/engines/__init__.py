"""The engines: the LLM, the image pipeline, their supervision, and the contract the rest of the server uses.

Importing the package bounds oneDNN's cache of compiled kernels (before any model compiles; a value already in the
environment wins). Continuous batching runs the LLM at a new input shape on most steps, and each shape gets kernels
of its own: with oneDNN's default (1024 kernels) and OpenVINO's CPU runtime cache (5000 shapes), a server's RSS rose
by 5-17 MB per burst of 200 requests for dozens of bursts. 128 kernels, with 16 shapes per compiled LLM
(``CPU_RUNTIME_CACHE_CAPACITY`` in ``engines/llm.py``), keep it flat at the same decode speed
(``scripts/soak.py``; docs/benchmarks.md).
"""

import os

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")
