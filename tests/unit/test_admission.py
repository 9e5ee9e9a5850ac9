"""Announcing LLM requests: which ones count, and that each is settled by its submit or by its end."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from aipc_chat.api.admission import AnnounceMiddleware
from aipc_chat.engines import admission


class Recorder:
    """An inner app that notes what was on its way while it ran, and settles (as submit does) when asked."""

    def __init__(self, arrivals: admission.Arrivals, *, submit: bool) -> None:
        self.arrivals, self.submit = arrivals, submit
        self.seen: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(self.arrivals.count)
        if self.submit:
            await asyncio.to_thread(admission.settle_current)  # as the routes call submit
            self.seen.append(self.arrivals.count)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def request(app: AnnounceMiddleware, method: str, path: str) -> int:
    async def main() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            return (await c.request(method, path)).status_code

    return asyncio.run(main())


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat"])
def test_an_llm_request_counts_until_it_submits(path: str) -> None:
    arrivals = admission.Arrivals()
    inner = Recorder(arrivals, submit=True)
    assert request(AnnounceMiddleware(inner, arrivals), "POST", path) == 200
    assert inner.seen == [1, 0]
    assert arrivals.count == 0


def test_a_request_that_never_submits_is_settled_by_its_end() -> None:
    arrivals = admission.Arrivals()
    inner = Recorder(arrivals, submit=False)
    assert request(AnnounceMiddleware(inner, arrivals), "POST", "/v1/chat/completions") == 200
    assert inner.seen == [1]
    assert arrivals.count == 0


@pytest.mark.parametrize(("method", "path"), [("GET", "/ready"), ("POST", "/v1/images/generations"),
                                              ("GET", "/v1/chat/completions")])
def test_other_requests_do_not_count(method: str, path: str) -> None:
    arrivals = admission.Arrivals()
    inner = Recorder(arrivals, submit=False)
    assert request(AnnounceMiddleware(inner, arrivals), method, path) == 200
    assert inner.seen == [0]


def test_settling_twice_counts_once() -> None:
    arrivals = admission.Arrivals()
    one, _ = arrivals.arrive(), arrivals.arrive()
    one.settle()
    one.settle()
    assert arrivals.count == 1
