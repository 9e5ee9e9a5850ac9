"""The chat page's answers as sanitized Markdown, live picture previews, controls built from GET /chat/options and
the demo models' label, in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.test_web_page import assistant, expect, send, set_image_options, wait_ready, wait_turn
from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.browser

# Stands in for POST /chat with a stream the test writes into, event by event (page.route answers with the whole
# body at once, so what the page shows while a stream is still open could not be seen). Other requests go through.
FAKE_CHAT = """() => {
  const realFetch = window.fetch.bind(window);
  window.fetch = (input, init = {}) => {
    const url = new URL(typeof input === "string" ? input : input.url, location.href);
    if (url.pathname !== "/chat" || init.method !== "POST") return realFetch(input, init);
    const stream = new ReadableStream({ start(controller) { window.__sse = controller; } });
    return Promise.resolve(new Response(stream, { status: 200, headers: { "Content-Type": "text/event-stream" } }));
  };
  window.__feed = (name, data) =>
    window.__sse.enqueue(new TextEncoder().encode(`event: ${name}\\ndata: ${JSON.stringify(data)}\\n\\n`));
  window.__end = () => window.__sse.close();
  window.__pwned = [];
}"""

# Logs, in order, each preview the picture's placeholder shows (its src, whether it is visible) and the final picture.
RECORD_PICTURE = """() => {
  window.__pictureLog = [];
  new MutationObserver((records) => {
    for (const r of records) {
      const el = r.target;
      if (r.type === "attributes" && el.matches(".image-preview img") && (el.getAttribute("src") || "")) {
        window.__pictureLog.push({kind: "preview", src: el.getAttribute("src"), step: el.dataset.step,
                                  visible: !el.closest(".image-preview").hidden});
      } else if (r.type === "childList" && el.matches(".image-list")) {
        for (const n of r.addedNodes) window.__pictureLog.push({kind: "image", src: n.querySelector("img").src});
      }
    }
  }).observe(document.getElementById("messages"), {subtree: true, childList: true, attributes: true,
                                                    attributeFilter: ["src"]});
}"""

MARKDOWN_HEAD = "## Plan\n\nSome *emphasis*, **strong** and `inline code`.\n\n```pyth"
MARKDOWN_CODE = "on\nprint('hi')\n"
MARKDOWN_REST = (
    "```\n\n- one\n- two\n- three\n\n| name | value |\n|---|---|\n| a | 1 |\n| b | 2 |\n\n"
    "See [the docs](https://example.com/docs) or [this](javascript:window.__pwned.push('link')).\n\n"
    "Raw: <img src=x onerror=\"window.__pwned.push('img')\"> and <b>bold?</b>\n\n"
    "<script>window.__pwned.push('script')</script>\n\n"
    "<iframe src=\"javascript:window.__pwned.push('iframe')\"></iframe>\n\n"
    "![a picture](javascript:window.__pwned.push('picture'))\n"
)


def options_loaded(page: Any) -> None:
    expect(page.locator("body")).to_have_attribute("data-options-loaded", "true")


def feed(page: Any, name: str, data: dict[str, Any]) -> None:
    page.evaluate("([name, data]) => window.__feed(name, data)", [name, data])


def done_event(text: str) -> dict[str, Any]:
    return {"conversation_id": "default", "assistant_response": text, "reasoning": "", "image_generated": False,
            "image_state": None, "image_job_id": None, "image_urls": [], "image_prompt": None, "image_error": None,
            "usage": {"prompt_tokens": 5, "completion_tokens": 40}, "timings": {"llm_s": 0.5, "total_s": 0.5}}


def test_answers_render_as_markdown_and_model_html_never_runs(new_page: Callable[..., Any], web_server: LiveServer,
                                                              artifacts: Path) -> None:
    page = new_page(web_server.base_url, permissions=["clipboard-read", "clipboard-write"])
    wait_ready(page)
    page.evaluate(FAKE_CHAT)
    send(page, "Show me some Markdown")
    article = assistant(page)
    answer = article.locator(".answer")

    # While the stream is open: an unfinished fence already shows as a code block.
    page.wait_for_function("() => window.__sse !== undefined")
    feed(page, "content", {"text": MARKDOWN_HEAD})
    feed(page, "content", {"text": MARKDOWN_CODE})
    expect(answer.locator("pre code.language-python")).to_have_text("print('hi')")
    expect(answer.locator("h2")).to_have_text("Plan")
    expect(article).to_have_attribute("data-state", "streaming")

    feed(page, "content", {"text": MARKDOWN_REST})
    text = MARKDOWN_HEAD + MARKDOWN_CODE + MARKDOWN_REST
    feed(page, "done", done_event(text.strip()))
    page.evaluate("window.__end()")
    wait_turn(page)

    expect(answer.locator("em")).to_have_text("emphasis")
    expect(answer.locator("strong")).to_have_text("strong")
    expect(answer.locator("p > code")).to_have_text("inline code")
    expect(answer.locator("pre code.language-python")).to_have_text("print('hi')")
    expect(answer.locator("ul > li")).to_have_text(["one", "two", "three"])
    expect(answer.locator("table th")).to_have_text(["name", "value"])
    expect(answer.locator("table tbody tr")).to_have_count(2)
    expect(answer.locator("table tbody td")).to_have_text(["a", "1", "b", "2"])
    docs = answer.get_by_role("link", name="the docs")
    expect(docs).to_have_attribute("href", "https://example.com/docs")
    expect(docs).to_have_attribute("target", "_blank")
    expect(docs).to_have_attribute("rel", re.compile(r"\bnoopener\b"))
    assert answer.get_attribute("data-markdown") == text.strip()

    # Nothing the model wrote as HTML is live: the tags show as text, javascript: links lose their target.
    for tag in ("img", "script", "iframe", "b"):
        expect(answer.locator(tag)).to_have_count(0)
    expect(answer).to_contain_text("Raw: <img src=x onerror=\"window.__pwned.push('img')\"> and <b>bold?</b>")
    expect(answer).to_contain_text("<script>window.__pwned.push('script')</script>")
    hrefs = answer.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert not [h for h in hrefs if h and not h.startswith("https://")], hrefs
    answer.get_by_text("this", exact=True).click()
    answer.get_by_text("a picture", exact=True).click()
    # The sanitizer's work, seen in the DOM (the page's Content-Security-Policy would also stop inline handlers, so
    # whether they ran alone would not show it): no element the model wrote, no event-handler attribute.
    assert answer.locator("img, script, iframe, object, embed").count() == 0
    handlers = answer.evaluate("""a => [...a.querySelectorAll('*')].flatMap(
        e => [...e.attributes].map(x => x.name)).filter(n => n.startsWith('on'))""")
    assert handlers == []
    # A control image whose error handler does run, added after the answer: once it has fired, an image of the
    # answer's would have fired too.
    page.evaluate("""() => { const img = new Image(); img.hidden = true;
        img.addEventListener('error', () => window.__pwned.push('control'));
        img.src = '/no-such-file'; document.body.append(img); }""")
    page.wait_for_function("() => window.__pwned.includes('control')")
    assert page.evaluate("window.__pwned") == ["control"]

    # The code block's copy button puts the code on the clipboard.
    copy = answer.get_by_role("button", name="Copy the code")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "print('hi')\n"
    page.screenshot(path=artifacts / "web-11-markdown.png")


def test_the_picture_previews_while_it_renders(new_page: Callable[..., Any], web_server: LiveServer,
                                               artifacts: Path) -> None:
    from PIL import Image

    page = new_page(web_server.base_url)
    wait_ready(page)
    options_loaded(page)
    page.evaluate(RECORD_PICTURE)
    set_image_options(page, steps=20, size="512x512", seed=3)
    send(page, "Draw a lighthouse at dusk", image="always")
    article = wait_turn(page)
    final = article.locator(".image-list img")
    expect(final).to_be_visible()
    expect(article.locator(".image-preview")).to_be_hidden()
    assert article.locator(".image-preview img").get_attribute("src") is None

    log = page.evaluate("window.__pictureLog")
    kinds = [entry["kind"] for entry in log]
    assert "image" in kinds and "preview" in kinds, log
    previews = [entry for entry in log[:kinds.index("image")] if entry["kind"] == "preview"]
    assert len({entry["src"] for entry in previews}) >= 2, f"fewer than two previews before the picture: {kinds}"
    assert all(entry["visible"] for entry in previews)
    steps = [int(entry["step"]) for entry in previews]
    assert steps == sorted(steps) and steps[-1] <= 20, steps
    prefix = "data:image/png;base64,"
    assert all(entry["src"].startswith(prefix) for entry in previews)
    with Image.open(io.BytesIO(base64.b64decode(previews[-1]["src"][len(prefix):]))) as im:
        assert im.format == "PNG" and 0 < im.width <= 512 and im.width == im.height
    page.screenshot(path=artifacts / "web-12-previewed.png")


def test_controls_follow_the_model_and_reach_the_request(new_page: Callable[..., Any],
                                                         web_server: LiveServer) -> None:
    from PIL import Image

    offered = httpx.get(f"{web_server.base_url}/chat/options", timeout=10).json()["image"]
    page = new_page(web_server.base_url)
    wait_ready(page)
    options_loaded(page)
    sizes = page.locator("#image-size option").evaluate_all("options => options.map(o => o.value)")
    assert sizes == offered["sizes"] and "768x768" not in sizes and not any("768" in s for s in sizes)
    expect(page.get_by_label("Size", exact=True)).to_have_value("512x512")
    expect(page.get_by_label("Steps", exact=True)).to_have_attribute("max", str(offered["max_steps"]))
    expect(page.get_by_label("CFG", exact=True)).to_have_attribute("max", "30")
    expect(page.get_by_label("CFG", exact=True)).to_have_value("7.5")
    samplers = page.locator("#image-sampler option").evaluate_all("options => options.map(o => o.value)")
    assert samplers == ["", *offered["samplers"]]
    expect(page.locator("#image-sampler option").first).to_have_text(f"Model default ({offered['default_sampler']})")

    set_image_options(page, steps=3, size="256x256", seed=7)
    page.get_by_label("CFG", exact=True).fill("4.5")
    page.get_by_label("Sampler", exact=True).select_option("Euler a")
    page.get_by_label("Negative prompt", exact=True).fill("blurry, text")
    with page.expect_request(lambda r: r.url.endswith("/chat") and r.method == "POST") as request:
        send(page, "Draw a cat on a mat", image="always")
    body = json.loads(request.value.post_data or "{}")
    assert body["image"] == "always"
    assert body["image_options"] == {"steps": 3, "guidance_scale": 4.5, "size": "256x256", "seed": 7,
                                     "sampler": "Euler a", "negative_prompt": "blurry, text"}
    article = wait_turn(page)
    expect(article.locator(".image-prompt")).to_contain_text(
        "256×256 · 3 steps · guidance 4.5 · seed 7 · sampler Euler a · negative: blurry, text")
    # The picture was made so (its PNG says how, as A1111's do).
    png = httpx.get(article.locator(".image-list img").get_attribute("src") or "", timeout=10)
    with Image.open(io.BytesIO(png.content)) as im:
        parameters = str(im.info["parameters"])
    assert "Negative prompt: blurry, text" in parameters and "Steps: 3, Sampler: Euler a, CFG scale: 4.5" in parameters

    # The choices are kept for the next visit.
    page.reload()
    options_loaded(page)
    expect(page.get_by_label("Sampler", exact=True)).to_have_value("Euler a")
    expect(page.get_by_label("CFG", exact=True)).to_have_value("4.5")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("3")
    expect(page.get_by_label("Size", exact=True)).to_have_value("256x256")
    expect(page.get_by_label("Negative prompt", exact=True)).to_have_value("blurry, text")


def test_the_demo_models_are_labelled(new_page: Callable[..., Any], web_server: LiveServer, artifacts: Path) -> None:
    page = new_page(web_server.base_url)
    options_loaded(page)
    banner = page.get_by_role("note")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Demo models")
    expect(banner).to_contain_text("gibberish")
    expect(banner).to_contain_text("aipc-chat serve")
    expect(page.get_by_label("Image", exact=True)).to_be_visible()
    page.screenshot(path=artifacts / "web-13-demo-label.png")


@pytest.fixture(scope="module")
def own_chat_model(browser: Any, demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A chat-only server of a model named by path (the demo LLM's files, served as a user's own model)."""
    root = tmp_path_factory.mktemp("web-own")
    server = start_server(root / "models", root / "data", root / "server.log", demo=False,
                          env={"AIPC_LLM_PATH": str(demo_models / "llm"), "AIPC_IMAGE_REPO": "none"})
    yield server
    server.stop()


def test_real_models_have_no_demo_label_and_no_image_model_no_picture_controls(
        new_page: Callable[..., Any], own_chat_model: LiveServer) -> None:
    page = new_page(own_chat_model.base_url)
    wait_ready(page)
    options_loaded(page)
    expect(page.locator("body")).to_have_attribute("data-demo", "false")
    expect(page.locator("#demo-banner")).to_be_hidden()
    expect(page.locator("#image-mode")).to_be_hidden()
    expect(page.locator("details.image-options")).to_be_hidden()
    with page.expect_request(lambda r: r.url.endswith("/chat") and r.method == "POST") as request:
        box = page.get_by_role("textbox", name="Message", exact=True)
        box.fill("Draw a cat")
        box.press("Enter")
    assert json.loads(request.value.post_data or "{}")["image"] == "never"
    article = wait_turn(page)
    expect(article.locator(".image-block")).to_be_hidden()
