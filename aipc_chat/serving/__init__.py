"""The serving layer between the APIs (routes, the orchestrator) and the engines, the same for every API.

    params.py   a request -> ``GenParams``: every API's defaults in one table, the seed rule
    models.py   a request's ``model`` -> the engine serving it (aliases, ``:latest``, any case)
    streams.py  the one place engine work is submitted and ends (``open_stream``, ``submit_image``, ``load_only``),
                and the one drain of an LLM stream (``Generation``: chunks as they come, then the ``Reply``)

Each API keeps only what is its own: its field names and how it formats chunks and errors. Nothing here knows HTTP.
"""

from aipc_chat.serving.models import bare, model_names, names_match, resolve_model, tagged
from aipc_chat.serving.params import DEFAULTS, IMAGE_SEED_MAX, LLM_SEED_MAX, Asked, Defaults, gen_params, resolve_seed
from aipc_chat.serving.streams import Chunk, Generation, Reply, load_only, open_stream, submit_image

__all__ = [
    "DEFAULTS", "IMAGE_SEED_MAX", "LLM_SEED_MAX", "Asked", "Chunk", "Defaults", "Generation", "Reply", "bare",
    "gen_params", "load_only", "model_names", "names_match", "open_stream", "resolve_model", "resolve_seed",
    "submit_image", "tagged",
]
