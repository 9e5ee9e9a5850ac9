"""Announcing LLM requests: the route's ``arrival`` dependency counts a request until ``submit`` settles it (or the
handler ends), and only routes that declare it count."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from aipc_chat.api.deps import ArrivalDep
from aipc_chat.engines import admission
from aipc_chat.errors import InvalidRequest


class Body(BaseModel):
    text: str


def make_app(seen: list[int]) -> tuple[FastAPI, admission.Arrivals]:
    """An app whose LLM routes note what was on its way while they ran; ``submit`` settles, as the engine's does."""
    arrivals = admission.Arrivals()
    app = FastAPI()
    app.state.runtime = SimpleNamespace(arrivals=arrivals)

    def submit(arrival: admission.Arrival) -> None:
        arrival.settle()

    @app.post("/submits")
    async def submits(arrival: ArrivalDep, body: Body) -> dict[str, str]:
        seen.append(arrivals.count)
        await asyncio.to_thread(submit, arrival)  # as the routes call engine.submit, with the handle explicitly
        seen.append(arrivals.count)
        return {"ok": body.text}

    @app.post("/refuses")
    async def refuses(arrival: ArrivalDep, body: Body) -> dict[str, str]:
        seen.append(arrivals.count)
        raise InvalidRequest("no")

    @app.post("/other")
    async def other(body: Body) -> dict[str, str]:
        seen.append(arrivals.count)
        return {"ok": body.text}

    return app, arrivals


def post(app: FastAPI, path: str, json: object) -> int:
    async def main() -> int:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return (await client.post(path, json=json)).status_code

    return asyncio.run(main())


def test_a_request_counts_until_it_submits() -> None:
    seen: list[int] = []
    app, arrivals = make_app(seen)
    assert post(app, "/submits", {"text": "hi"}) == 200
    assert seen == [1, 0]
    assert arrivals.count == 0


@pytest.mark.parametrize("body", [{"text": "hi"}, {"wrong": 1}])
def test_a_request_that_never_submits_is_settled_by_its_end(body: object) -> None:
    seen: list[int] = []
    app, arrivals = make_app(seen)
    assert post(app, "/refuses", body) in (400, 422, 500)
    assert arrivals.count == 0


def test_routes_without_the_dependency_do_not_count() -> None:
    seen: list[int] = []
    app, arrivals = make_app(seen)
    assert post(app, "/other", {"text": "hi"}) == 200
    assert seen == [0]
    assert arrivals.count == 0


def test_settling_twice_counts_once() -> None:
    arrivals = admission.Arrivals()
    one, _ = arrivals.arrive(), arrivals.arrive()
    one.settle()
    one.settle()
    assert arrivals.count == 1
