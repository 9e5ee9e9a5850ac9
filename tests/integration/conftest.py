"""Engines loaded in process on the demo models, once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aipc_chat.engines.image import local_image_engine
from aipc_chat.engines.jobs import ImageEngine
from aipc_chat.engines.llm import LLMEngine
from aipc_chat.settings import Settings


@pytest.fixture(scope="module")
def llm_engine(demo_models: Path) -> Iterator[LLMEngine]:
    # A long admission window: a request counted as on its way and never settled would show as a lone one waiting.
    settings = Settings(demo=True, models_dir=demo_models.parent, max_num_seqs=4, llm_queue_size=2,
                        batch_window_ms=100.0)
    engine = LLMEngine(settings, demo_models / "llm", "demo", "CPU")
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="module", params=["genai", "optimum"])
def image_engine(demo_models: Path, tmp_path_factory: pytest.TempPathFactory,
                 request: pytest.FixtureRequest) -> Iterator[ImageEngine]:
    """The image engine on the demo model, once per image runtime (openvino-genai, optimum-intel)."""
    settings = Settings(demo=True, models_dir=demo_models.parent, data_dir=tmp_path_factory.mktemp("data"),
                        image_queue_size=2, image_runtime=request.param)
    engine = local_image_engine(settings, demo_models / "image", "demo-sd", "CPU", max_size=512)
    engine.load()
    yield engine
    engine.close()
