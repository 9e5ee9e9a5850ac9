"""The built-in chat page in headless Chromium against a live demo server: streaming, images, history, stop, keys."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from aipc_chat.users import add_user
from tests.browser.conftest import VIEWPORT
from tests.conftest import REPO
from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.browser

DOCS_SCREENSHOT = REPO / "docs" / "screenshot.png"
DOCS_SCREENSHOT_MAX_BYTES = 300_000
# docs/screenshot.png is committed: rewrite it only when asked, not on every run.
UPDATE_DOCS_SCREENSHOT = os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1"

# Logs, in DOM order, the text an assistant's answer shows after each change of it (with whether Send was disabled
# then) and the changes of its data-state. Mutation records keep their order, so "text shown while the state was still
# streaming" proves the answer arrived incrementally. (A demo-model turn can end before a check made after it starts
# could see it.) The answer is Markdown, rendered again as it grows: each render replaces the answer's children.
RECORD_ANSWER = """() => {
  window.__answerLog = [];
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") {
        window.__answerLog.push({kind: "state", old: r.oldValue});
        continue;
      }
      const answer = r.target.closest && r.target.closest(".answer");
      if (answer && r.addedNodes.length > 0) {
        const sendDisabled = document.getElementById("send").disabled;
        window.__answerLog.push({kind: "text", text: answer.textContent, sendDisabled});
      }
    }
  }).observe(document.getElementById("messages"), {subtree: true, childList: true, attributes: true,
                                                    attributeFilter: ["data-state"], attributeOldValue: true});
}"""


def expect(target: Any) -> Any:
    """playwright's auto-waiting assertions (imported late: without playwright the tests skip, not fail)."""
    from playwright.sync_api import expect as pw_expect

    return pw_expect(target)


def wait_ready(page: Any) -> None:
    expect(page.locator("#status-ready")).to_have_text("Ready")


def send(page: Any, text: str, *, image: str = "never") -> None:
    """Type a message and press Enter, as a user does; the new turn is on screen when this returns."""
    page.get_by_label("Image", exact=True).select_option(image)
    box = page.get_by_role("textbox", name="Message", exact=True)
    box.fill(text)
    turns = page.locator("article[data-role=assistant]")
    before = turns.count()
    box.press("Enter")
    expect(turns).to_have_count(before + 1)


def set_image_options(page: Any, *, steps: int, size: str, seed: int | None = None) -> None:
    page.locator("details.image-options > summary").click()
    page.get_by_label("Steps", exact=True).fill(str(steps))
    page.get_by_label("Size", exact=True).select_option(size)
    if seed is not None:
        page.get_by_label("Seed", exact=True).fill(str(seed))


def assistant(page: Any) -> Any:
    """The latest assistant message."""
    return page.locator("article[data-role=assistant]").last


def wait_turn(page: Any, state: str = "done", timeout: float = 30_000) -> Any:
    article = assistant(page)
    expect(article).to_have_attribute("data-state", state, timeout=timeout)
    return article


def user_id(page: Any) -> str:
    return str(page.evaluate("localStorage.getItem('aipc.userId')"))


def history(base_url: str, user: str, conversation: str = "default") -> list[dict[str, Any]]:
    r = httpx.get(f"{base_url}/chat/{user}/history", params={"conversation_id": conversation}, timeout=10)
    r.raise_for_status()
    return list(r.json()["messages"])


def transcript(page: Any) -> list[tuple[str, str]]:
    """(role, text) of every message on screen."""
    rows = page.locator("#messages article").evaluate_all(
        "els => els.map(a => [a.dataset.role, a.querySelector('.msg-text').textContent])")
    return [(role, text) for role, text in rows]


def natural_width(img: Any) -> int:
    expect(img).to_be_visible()
    img.evaluate("img => img.decode()")  # resolves once the PNG is loaded and decoded
    return int(img.evaluate("img => img.naturalWidth"))


def shrink_png(path: Path) -> None:
    """Quantize a screenshot to a 256-colour PNG: far smaller, still sharp for text."""
    from PIL import Image

    with Image.open(path) as im:
        # Octree keeps the small coloured areas (the green "Ready") that median cut greys out.
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


def test_answer_streams_with_reasoning_and_speed(new_page: Callable[..., Any], web_server: LiveServer,
                                                 artifacts: Path) -> None:
    page = new_page(web_server.base_url)
    wait_ready(page)
    status = page.locator("#status")
    expect(status).to_contain_text("aipc-demo-deepseek-r1")
    expect(status).to_contain_text("aipc-demo-sd15")
    expect(status).to_contain_text("CPU")
    page.evaluate(RECORD_ANSWER)

    send(page, "What is OpenVINO?")
    article = wait_turn(page)

    log = page.evaluate("window.__answerLog")
    end = next((i for i, e in enumerate(log) if e["kind"] == "state" and e["old"] == "streaming"), None)
    assert end is not None, f"the turn never left the streaming state: {log}"
    streamed = [e["text"] for e in log[:end] if e["kind"] == "text"]
    assert any(text.strip() for text in streamed), f"no answer text arrived before the turn ended: {log}"
    assert all(e["sendDisabled"] for e in log[:end] if e["kind"] == "text"), f"Send was enabled while streaming: {log}"
    answer = article.locator(".answer").text_content()
    assert answer and answer.strip()
    # What streamed is what the server stored (the Markdown as written; the page shows it rendered).
    stored = history(web_server.base_url, user_id(page))
    assert stored[-1]["role"] == "assistant" and stored[-1]["content"] == article.locator(".answer").get_attribute(
        "data-markdown")

    reasoning = article.locator("details.reasoning")
    expect(reasoning).to_be_visible()
    expect(reasoning.locator("summary")).to_have_text("Reasoning")
    assert reasoning.get_attribute("open") is None  # collapsed by default
    assert (reasoning.locator(".reasoning-text").text_content() or "").strip() == stored[-1]["reasoning"]
    expect(page.locator("#status-speed")).to_have_text(re.compile(r"\d+(\.\d+)? tok/s · TTFT \d+ ms"))
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_disabled()

    # Shift+Enter is a newline, not a send.
    box = page.get_by_role("textbox", name="Message", exact=True)
    box.fill("line one")
    box.press("Shift+Enter")
    box.type("line two")
    assert box.input_value() == "line one\nline two"
    assert page.locator("article[data-role=user]").count() == 1
    page.screenshot(path=artifacts / "web-1-streamed.png")


def test_image_history_gallery_and_new_conversation(new_page: Callable[..., Any], web_server: LiveServer,
                                                    artifacts: Path) -> None:
    page = new_page(web_server.base_url)
    wait_ready(page)
    send(page, "What is OpenVINO?")
    wait_turn(page)

    set_image_options(page, steps=20, size="256x256", seed=42)
    send(page, "Draw a cat sitting on a windowsill", image="always")
    article = wait_turn(page)
    expect(article.locator(".image-prompt")).to_contain_text("256×256 · 20 steps · guidance 7.5 · seed 42")
    img = article.locator(".image-list img")
    assert natural_width(img) == 256
    link = article.locator(".image-list a")
    assert link.get_attribute("target") == "_blank"
    src = img.get_attribute("src")
    assert src and re.search(r"/images/[0-9a-f]+\.png$", src) and link.get_attribute("href") == src
    expect(page.locator("#status-speed")).to_contain_text(re.compile(r"image \d+\.\d s"))
    expect(article.locator("progress")).to_be_hidden()

    # The screenshot for the README: a conversation with its reasoning open, an answer and an image.
    page.locator("details.image-options > summary").click()  # fold the options away again
    article.locator("details.reasoning > summary").click()
    page.locator("#messages").evaluate("m => { m.scrollTop = m.scrollHeight; }")  # the click scrolled up to it
    page.locator("#message").blur()
    page.screenshot(path=artifacts / "web-2-image.png")
    if UPDATE_DOCS_SCREENSHOT:
        page.set_viewport_size({"width": 1000, "height": 880})  # room for the whole conversation
        page.locator("#messages").evaluate("m => { m.scrollTop = m.scrollHeight; }")
        page.screenshot(path=DOCS_SCREENSHOT)
        shrink_png(DOCS_SCREENSHOT)
        assert DOCS_SCREENSHOT.stat().st_size < DOCS_SCREENSHOT_MAX_BYTES
        page.set_viewport_size(VIEWPORT)
    before = transcript(page)

    # Reload: the page finds its user id and conversation in localStorage and renders the stored history.
    page.reload()
    wait_ready(page)
    expect(page.locator("#messages article")).to_have_count(4)
    assert transcript(page) == before
    article = assistant(page)
    assert article.locator("details.reasoning").get_attribute("open") is None
    assert natural_width(article.locator(".image-list img")) == 256
    expect(article.locator(".image-prompt")).to_contain_text("Image prompt:")
    page.screenshot(path=artifacts / "web-3-reloaded.png")

    # Gallery: the user's images with their prompt and parameters.
    page.get_by_role("tab", name="Gallery").click()
    card = page.locator("#gallery li.card")
    expect(card).to_have_count(1)
    assert natural_width(card.locator("img")) == 256
    expect(card.locator(".card-prompt")).to_have_text(re.compile(r"\S"))
    names = card.locator("dl.params dt").all_text_contents()
    values = card.locator("dl.params dd").all_text_contents()
    assert dict(zip(names, values, strict=True)) == {"Size": "256×256", "Steps": "20", "Guidance": "7.5", "Seed": "42"}
    page.screenshot(path=artifacts / "web-4-gallery.png")
    page.get_by_role("tab", name="Chat").click()

    # New conversation: an empty view, a fresh id, and the old conversation still listed.
    old_conversation = page.evaluate("localStorage.getItem('aipc.conversationId') || 'default'")
    page.get_by_role("button", name="New conversation", exact=True).click()
    expect(page.locator("#messages article")).to_have_count(0)
    expect(page.locator("#empty-hint")).to_be_visible()
    new_conversation = page.evaluate("localStorage.getItem('aipc.conversationId')")
    assert new_conversation != old_conversation and re.fullmatch(r"c-[0-9a-f]+", new_conversation)
    send(page, "Hello")
    wait_turn(page)
    expect(page.locator("#messages article")).to_have_count(2)
    assert len(history(web_server.base_url, user_id(page), new_conversation)) == 2
    expect(page.locator("#conversation option")).to_have_count(2)
    page.reload()
    wait_ready(page)
    expect(page.locator("#messages article")).to_have_count(2)  # still the new conversation after a reload
    page.screenshot(path=artifacts / "web-5-new-conversation.png")


def active_work(base_url: str) -> dict[str, int]:
    models = httpx.get(f"{base_url}/ready", timeout=5).json()["models"]
    return {"llm": models["llm"]["active_requests"], "image": models["image"]["active_jobs"],
            "queued": models["image"]["queued_jobs"]}


def test_stop_while_the_image_renders(new_page: Callable[..., Any], web_server: LiveServer, artifacts: Path) -> None:
    # The demo LLM answers in tens of milliseconds, so the image (100 steps at 512x512, ~10 s) is what can be
    # stopped. The page cancels the image job and the stream winds down; the server must end up idle.
    page = new_page(web_server.base_url)
    wait_ready(page)
    set_image_options(page, steps=100, size="512x512")
    send(page, "Draw a red fox in the snow", image="always")
    article = assistant(page)
    progress = article.locator("progress")
    expect(progress).to_be_visible(timeout=15_000)
    page.wait_for_function("p => p.value >= 3", arg=progress.element_handle())
    expect(article.locator(".image-progress-text")).to_contain_text(re.compile(r"step \d+ of 100"))
    assert active_work(web_server.base_url)["image"] == 1
    page.screenshot(path=artifacts / "web-6-rendering.png")

    t0 = time.monotonic()
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(article).to_have_attribute("data-state", "stopped", timeout=3_000)
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_disabled()
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_be_focused()
    expect(article.locator(".notice")).to_have_text("Image stopped.")
    expect(progress).to_be_hidden()
    while active_work(web_server.base_url) != {"llm": 0, "image": 0, "queued": 0}:
        assert time.monotonic() - t0 < 2, f"server still busy: {active_work(web_server.base_url)}"
        time.sleep(0.05)
    assert article.locator(".image-list img").count() == 0
    # The stored turn keeps its answer but no image URL that would never resolve.
    stored = history(web_server.base_url, user_id(page))
    assert stored[-1]["role"] == "assistant" and stored[-1]["image_urls"] == []
    page.screenshot(path=artifacts / "web-7-stopped.png")

    send(page, "Thanks")  # the page is usable again
    wait_turn(page)


def test_stop_before_the_first_token(new_page: Callable[..., Any], web_server: LiveServer) -> None:
    # A /chat that never answers stands in for a slow prompt: Stop must abort the fetch itself.
    page = new_page(web_server.base_url)
    wait_ready(page)
    page.route("**/chat", lambda route: None)
    send(page, "Hello")
    stop = page.get_by_role("button", name="Stop", exact=True)
    expect(stop).to_be_enabled()
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_disabled()
    stop.click()
    article = wait_turn(page, "stopped", timeout=3_000)
    expect(article.locator(".notice")).to_have_text("Stopped.")
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()
    expect(stop).to_be_disabled()


def refuse_with(status: int) -> Callable[[Any], None]:
    """A route handler answering /chat as the server does when it refuses: JSON error body and Retry-After."""
    body = json.dumps({"error": {"message": "Slow down.", "type": "rate_limit_error", "param": None,
                                 "code": "rate_limited"}})

    def handle(route: Any) -> None:
        route.fulfill(status=status, headers={"Retry-After": "7"}, content_type="application/json", body=body)

    return handle


def test_errors_are_shown(new_page: Callable[..., Any], web_server: LiveServer, artifacts: Path) -> None:
    page = new_page(web_server.base_url)
    wait_ready(page)
    box = page.get_by_role("textbox", name="Message", exact=True)

    # A 400 from the real server, before any stream: its message, and the text back in the box to edit.
    too_long = "a" * 16_001
    send(page, too_long)
    article = wait_turn(page, "error")
    expect(article.get_by_role("alert")).to_contain_text("at most 16000 characters")
    assert box.input_value() == too_long

    # An image error mid-stream (the server allows 100 steps; the page's Steps field stops at 100, so the request
    # is changed on its way): the answer stays, the reason is shown.
    set_image_options(page, steps=200, size="256x256")
    page.get_by_label("Steps", exact=True).press("Tab")  # leaving the field keeps it within bounds
    expect(page.get_by_label("Steps", exact=True)).to_have_value("100")

    def too_many_steps(route: Any) -> None:
        body = json.loads(route.request.post_data or "{}")
        body["image_options"]["steps"] = 200
        route.continue_(post_data=json.dumps(body))

    page.route("**/chat", too_many_steps)
    send(page, "Draw a cat", image="always")
    article = wait_turn(page)
    expect(article.get_by_role("alert")).to_contain_text("No image: At most 100 steps.")
    page.unroute("**/chat")

    # 429 with Retry-After (the rate limit) and a 503 (models loading), as the server sends them.
    for status, expected in ((429, "Too many requests: Slow down. Try again in 7 s."),
                             (503, "The server is busy or still loading: Slow down. Try again in 7 s.")):
        page.route("**/chat", refuse_with(status))
        send(page, f"Hello {status}")
        article = wait_turn(page, "error")
        expect(article.get_by_role("alert")).to_have_text(expected)
        page.unroute("**/chat")
    page.screenshot(path=artifacts / "web-8-errors.png")


def test_sse_parsing(new_page: Callable[..., Any], web_server: LiveServer) -> None:
    # What the live server does not send but SSE allows: CRLF and CR line ends, keep-alive comments, a data field
    # split over two lines, an event the page does not know, an unnamed "[DONE]" and a field without a space.
    done = {"conversation_id": "default", "assistant_response": "Hello, world.", "reasoning": "Thinking it over.",
            "image_generated": False, "image_state": None, "image_job_id": None, "image_urls": [],
            "image_prompt": None, "image_error": None, "usage": {"prompt_tokens": 5, "completion_tokens": 4},
            "timings": {"llm_s": 0.5, "total_s": 0.5}}
    stream = (": keep-alive\r\n\r\n"
              'event: reasoning\r\ndata: {"text": "Thinking it over."}\r\n\r\n'
              'event: content\rdata: {"text":\rdata: "Hello, "}\r\r'
              'event: surprise\ndata: {"text": "ignored"}\n\n'
              'event:content\ndata:{"text": "world."}\n\n'
              ": keep-alive\n\n"
              "data: [DONE]\n\n"
              f"event: done\ndata: {json.dumps(done)}\n\n")
    page = new_page(web_server.base_url)
    wait_ready(page)
    page.route("**/chat", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=stream))
    send(page, "Hello")
    article = wait_turn(page)
    expect(article.locator(".answer")).to_have_text("Hello, world.")
    expect(article.locator(".reasoning-text")).to_have_text("Thinking it over.")
    expect(page.locator("#status-speed")).to_contain_text("8.0 tok/s")


def test_narrow_window(new_page: Callable[..., Any], web_server: LiveServer, artifacts: Path) -> None:
    page = new_page(web_server.base_url)
    page.set_viewport_size({"width": 360, "height": 700})
    wait_ready(page)
    send(page, "What is OpenVINO?")
    wait_turn(page)
    for name in ("Send", "Stop", "New conversation"):
        expect(page.get_by_role("button", name=name, exact=True)).to_be_in_viewport()
    expect(page.get_by_role("textbox", name="Message", exact=True)).to_be_in_viewport()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "horizontal scrolling"
    page.screenshot(path=artifacts / "web-10-narrow.png")


@pytest.fixture(scope="module")
def keyed_server(browser: Any, demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("web-key")
    server = start_server(demo_models.parent, root / "data", root / "server.log",
                          env={"AIPC_API_KEY": "sesame-1234"})
    yield server
    server.stop()


def test_api_key_is_asked_for_then_sent(new_page: Callable[..., Any], keyed_server: LiveServer,
                                        artifacts: Path) -> None:
    page = new_page(keyed_server.base_url)
    chats: list[str | None] = []
    page.on("request", lambda r: chats.append(r.headers.get("authorization")) if r.url.endswith("/chat") else None)
    dialog = page.get_by_role("dialog", name="API key needed")
    expect(dialog).to_be_visible()  # the history request got a 401
    key = page.get_by_role("textbox", name="API key")
    key.fill("wrong")
    key.press("Enter")
    expect(dialog).to_contain_text("refused")
    page.screenshot(path=artifacts / "web-9-api-key.png")
    key.fill("sesame-1234")
    key.press("Enter")
    expect(dialog).to_be_hidden()
    # the dialog's "close" event, which stores the key, is dispatched in a task after the dialog hides
    page.wait_for_function("localStorage.getItem('aipc.apiKey') === 'sesame-1234'", timeout=5000)
    wait_ready(page)

    send(page, "Hello")
    article = wait_turn(page)
    expect(article.locator(".answer")).not_to_be_empty()
    assert chats == ["Bearer sesame-1234"]
    page.reload()  # the key is remembered: no dialog, the history loads
    expect(page.locator("#messages article")).to_have_count(2)
    expect(dialog).to_be_hidden()


@pytest.fixture(scope="module")
def users_server(browser: Any, demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("web-users")
    keys = {name: add_user(root / "users.txt", name) for name in ("alice", "bob")}
    server = start_server(demo_models.parent, root / "data", root / "server.log",
                          env={"AIPC_USERS_FILE": str(root / "users.txt")})
    yield server, keys
    server.stop()


def test_with_per_user_keys_the_key_decides_the_user(new_page: Callable[..., Any], users_server: Any) -> None:
    server, keys = users_server
    page = new_page(server.base_url)
    bodies: list[str] = []
    page.on("request", lambda r: bodies.append(r.post_data or "") if r.url.endswith("/chat") else None)
    dialog = page.get_by_role("dialog", name="API key needed")
    expect(dialog).to_be_visible()
    page.get_by_role("textbox", name="API key").fill(keys["alice"])
    page.get_by_role("textbox", name="API key").press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.locator("body")).to_have_attribute("data-user-id", "alice")
    wait_ready(page)
    send(page, "Hello")
    wait_turn(page)
    assert [json.loads(b)["user_id"] for b in bodies] == ["alice"]
    history = httpx.get(f"{server.base_url}/chat/alice/history", headers={"authorization": f"Bearer {keys['alice']}"})
    assert [m["role"] for m in history.json()["messages"]] == ["user", "assistant"]
