"""The image-level safety hook: a pipeline that ships a safety checker and flags an image gets no PNG stored."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from aipc_chat.engines.contract import ImageParams
from aipc_chat.engines.image import local_image_engine
from aipc_chat.errors import ContentFiltered
from aipc_chat.serving.aio import wait_job
from aipc_chat.settings import Settings


class CheckingPipeline:
    """Stands in for an optimum pipeline whose folder has a safety checker (none of ours does)."""

    num_timesteps = 1
    vae_scale_factor = 8
    unet = SimpleNamespace(config={"block_out_channels": [32, 64]})
    scheduler = SimpleNamespace(config={})

    def __init__(self, flag: bool) -> None:
        self.flag = flag

    def __call__(self, **kwargs: Any) -> SimpleNamespace:
        kwargs["callback_on_step_end"](self, 0, 0, {})
        return SimpleNamespace(images=[Image.new("RGB", (64, 64))], nsfw_content_detected=[self.flag])


@pytest.mark.parametrize("flag", [True, False])
def test_flagged_images_are_withheld(tmp_path: Path, flag: bool) -> None:
    engine = local_image_engine(Settings(data_dir=tmp_path, image_runtime="optimum"), tmp_path, "m", "CPU",
                                max_size=512,
                                pipelines=lambda: CheckingPipeline(flag))
    engine.load()
    job = engine.submit(ImageParams(prompt="x", width=64, height=64, steps=1, seed=1))
    try:
        if flag:
            with pytest.raises(ContentFiltered):
                asyncio.run(wait_job(job, 5))
            assert job.images == [] and engine.store.path(job.names[0]) is None
        else:
            asyncio.run(wait_job(job, 5))
            assert engine.store.path(job.names[0]) is not None
        health = engine.health()
        assert health.state == "ready" and health.restarts == 0  # a flagged image is no pipeline fault
    finally:
        engine.close()
