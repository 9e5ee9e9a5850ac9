// The built-in chat page. Plain JS, no framework or build step: it must run on a machine with no internet.
// Talks to the server on the same origin: POST /chat (server-sent events), history, /ready, image jobs, and
// GET /chat/options (what the served models accept: the picture controls are built from it).
// Answers are Markdown, rendered by the vendored marked and sanitized by the vendored DOMPurify (web/vendor/).

const STORE = {
  userId: "aipc.userId",
  conversationId: "aipc.conversationId",
  apiKey: "aipc.apiKey",
  imageMode: "aipc.imageMode",
  imageSteps: "aipc.imageSteps",
  imageSize: "aipc.imageSize",
  imageCfg: "aipc.imageCfg",
  imageSampler: "aipc.imageSampler",
  imageNegative: "aipc.imageNegative",
};
const READY_POLL_MS = { loading: 2000, ready: 30000, unreachable: 5000 };
const STOP_GRACE_MS = 1500; // after cancelling an image job, how long the stream may take to end by itself
const GALLERY_MAX_CONVERSATIONS = 50;
const GALLERY_PARALLEL = 4;

const $ = (id) => document.getElementById(id);
const els = {
  ready: $("status-ready"), llm: $("status-llm"), image: $("status-image"), speed: $("status-speed"),
  tabChat: $("tab-chat"), tabGallery: $("tab-gallery"), chatView: $("chat-view"), galleryView: $("gallery-view"),
  conversation: $("conversation"), newConversation: $("new-conversation"),
  pageNotice: $("page-notice"), messages: $("messages"), emptyHint: $("empty-hint"),
  composer: $("composer"), message: $("message"), imageMode: $("image-mode"),
  imageSteps: $("image-steps"), imageSize: $("image-size"), imageSeed: $("image-seed"),
  imageCfg: $("image-cfg"), imageSampler: $("image-sampler"), imageNegative: $("image-negative"),
  demoBanner: $("demo-banner"), pictureControls: document.querySelectorAll(".picture-control"),
  send: $("send"), stop: $("stop"),
  gallery: $("gallery"), galleryStatus: $("gallery-status"), galleryRefresh: $("gallery-refresh"),
  keyDialog: $("key-dialog"), keyInput: $("api-key"), keyReason: $("key-reason"), keyCancel: $("key-cancel"),
  tplUser: $("tpl-user"), tplAssistant: $("tpl-assistant"),
};

const state = {
  userId: "",
  conversationId: "default",
  conversations: [],
  turn: null, // the in-flight /chat request, if any
  historySeq: 0, // guards against a slow history answer overwriting a newer one
  keyPrompt: null, // the open API-key dialog, shared by every request that got a 401
  keyDeclined: false,
  options: null, // GET /chat/options: what the served models accept (null until it answers)
  readiness: null, // the last /ready state seen
};

// ---------------------------------------------------------------------------------------------------------------
// Storage (localStorage may be unavailable, e.g. in some private modes: the page still works for one visit)

function load(key, fallback) {
  try {
    return localStorage.getItem(key) ?? fallback;
  } catch {
    return fallback;
  }
}

function save(key, value) {
  try {
    if (value === null || value === undefined) localStorage.removeItem(key);
    else localStorage.setItem(key, String(value));
  } catch {
    // Not persisted; nothing else to do.
  }
}

function randomHex(bytes) {
  const data = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(data, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Ids must match the server's SAFE_ID pattern: letters, digits, _ . @ - (at most 64).
function ensureUserId() {
  let id = load(STORE.userId, "");
  if (!/^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$/.test(id)) {
    id = `web-${randomHex(8)}`;
    save(STORE.userId, id);
  }
  return id;
}

// With per-user keys (AIPC_USERS_FILE) the key decides who the user is: ask the server before any history call.
async function resolveUser() {
  try {
    const res = await api("/chat/me");
    if (res.ok) {
      const body = await res.json();
      if (body.user_id) state.userId = body.user_id;
    }
  } catch {
    // Unreachable for now: keep this browser's own id.
  }
  document.body.dataset.userId = state.userId;
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP: every request carries the API key once one is known; a 401 asks for it (once for all requests waiting)
// and retries, until the user cancels the dialog.

function withAuth(headers, key) {
  return key ? { ...headers, Authorization: `Bearer ${key}` } : { ...headers };
}

async function api(path, options = {}, { interactive = false } = {}) {
  for (;;) {
    const key = load(STORE.apiKey, "");
    const res = await fetch(path, { ...options, headers: withAuth(options.headers, key) });
    if (res.status !== 401 || !(await retryAfter401(key, interactive))) return res;
  }
}

// After a 401 for a request sent with `sentKey`: whether there is now a key worth retrying with.
async function retryAfter401(sentKey, interactive) {
  if (load(STORE.apiKey, "") !== sentKey) return true; // a new key was entered meanwhile: try that one
  if (sentKey) save(STORE.apiKey, null); // the stored key is wrong: forget it
  // Background requests stop asking once the user said no; sending a message asks again.
  if (state.keyDeclined && !interactive) return false;
  return askForKey(sentKey ? "The API key was refused. Enter the right one." :
    "This server asks for an API key. It is kept in this browser only.");
}

// A readable sentence for a failed response: the server's {"error": {...}} message, plus Retry-After advice.
async function errorText(res) {
  let message = `${res.status} ${res.statusText}`.trim();
  try {
    const body = await res.json();
    const err = body && body.error;
    if (err && err.message) message = err.message;
    else if (typeof body.detail === "string") message = body.detail;
  } catch {
    // Not JSON: keep the status line.
  }
  const retry = res.headers.get("Retry-After");
  const later = retry ? ` Try again in ${retry} s.` : "";
  if (res.status === 429) return `Too many requests: ${message}${later}`;
  if (res.status === 503) return `The server is busy or still loading: ${message}${later}`;
  if (res.status === 401) return `An API key is required: ${message}`;
  return message;
}

function askForKey(reason) {
  if (state.keyPrompt) return state.keyPrompt;
  state.keyPrompt = new Promise((resolve) => {
    const dialog = els.keyDialog;
    els.keyReason.textContent = reason;
    els.keyInput.value = "";
    dialog.returnValue = "";
    dialog.addEventListener("close", () => {
      const key = els.keyInput.value.trim();
      const ok = dialog.returnValue === "save" && key !== "";
      if (ok) save(STORE.apiKey, key);
      state.keyDeclined = !ok;
      state.keyPrompt = null;
      resolve(ok);
    }, { once: true });
    dialog.showModal();
    els.keyInput.focus();
  });
  return state.keyPrompt;
}

// ---------------------------------------------------------------------------------------------------------------
// Server-sent events. EventSource cannot POST, so the page reads the fetch body and parses the stream itself
// (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).

class SSEParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.eventName = "";
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    // Lines end in \r\n, \n or \r. A \r at the very end may be the first half of a \r\n: wait for more.
    const eol = /\r\n|\n|\r(?!$)/g;
    let start = 0;
    let match;
    while ((match = eol.exec(this.buffer)) !== null) {
      this.line(this.buffer.slice(start, match.index));
      start = eol.lastIndex;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return; // keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.eventName = value;
    else if (field === "data") this.data.push(value);
    // "id" and "retry" do not matter: a chat turn is never resumed.
  }

  dispatch() {
    if (this.data.length > 0) {
      const raw = this.data.join("\n");
      let payload = raw;
      try {
        payload = JSON.parse(raw);
      } catch {
        // Not JSON (e.g. "[DONE]"): hand over the text.
      }
      this.onEvent(this.eventName || "message", payload);
    }
    this.reset();
  }
  // At the end of the stream an event without its blank line is dropped, as the spec says.
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser(onEvent);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.push(decoder.decode(value, { stream: true }));
  }
  parser.push(decoder.decode());
}

// ---------------------------------------------------------------------------------------------------------------
// Markdown. The model's text is untrusted: marked turns it into HTML in which raw HTML the model wrote is shown as
// text (never parsed), then DOMPurify removes anything active that is left (event handlers, javascript: links) and
// the result is inserted as DOM nodes. Without the libraries (a broken install) answers show as plain text.

const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
// Tags a chat answer never needs; images are shown as links (a model's image URL would load from anywhere).
const FORBID_TAGS = ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed",
  "svg", "math", "video", "audio", "source", "picture", "link", "meta", "base"];

function createMarkdown() {
  const lib = window.marked;
  const purify = window.DOMPurify;
  if (!lib || !lib.Marked || !purify || !purify.isSupported) return null;
  const md = new lib.Marked({ gfm: true, breaks: true, async: false });
  md.use({
    renderer: {
      html(token) {
        const text = escapeHtml(token.text);
        return token.block ? `<p>${text.trim()}</p>\n` : text;
      },
      image(token) {
        return `<a href="${escapeHtml(token.href)}">${escapeHtml(token.text || token.href)}</a>`;
      },
    },
  });
  purify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  });
  return (source) => purify.sanitize(md.parse(source), {
    FORBID_TAGS, FORBID_ATTR: ["style"], RETURN_DOM_FRAGMENT: true,
  });
}

const markdown = createMarkdown();

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (a plain-http address other than localhost): the old way, through a selection.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

function addCopyButtons(root) {
  for (const pre of root.querySelectorAll("pre")) {
    const code = pre.querySelector("code") || pre;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code secondary";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy the code");
    button.addEventListener("click", async () => {
      const ok = await copyText(code.textContent);
      button.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
    const block = document.createElement("div");
    block.className = "code-block";
    pre.replaceWith(block);
    block.append(button, pre);
  }
}

// Render `source` into `el` (its whole content, each time: a stream re-renders as it grows).
function renderMarkdown(el, source) {
  if (!markdown) {
    el.classList.add("plain");
    el.textContent = source;
    return;
  }
  const fragment = markdown(source);
  addCopyButtons(fragment);
  el.replaceChildren(fragment);
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering. Server text goes in through textContent, or as sanitized Markdown (above), never raw innerHTML.

function nearBottom() {
  const m = els.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom() {
  els.messages.scrollTop = els.messages.scrollHeight;
}

// Follow new content while the reader is at the bottom; a reader who scrolled up to older messages stays there.
// A ResizeObserver catches every growth (streamed text, an image loading, the header wrapping), not only ours.
const follow = {
  stick: true,
  observer: new ResizeObserver(() => {
    if (follow.stick) scrollToBottom();
  }),
  watch(el) {
    this.observer.observe(el);
  },
  reset() {
    this.observer.disconnect();
    this.observer.observe(els.messages);
    this.stick = true;
  },
};

function updateEmptyHint() {
  els.emptyHint.hidden = els.messages.childElementCount > 0;
}

function clearMessages() {
  els.messages.replaceChildren();
  follow.reset();
  updateEmptyHint();
}

function showPageNotice(text) {
  els.pageNotice.textContent = text || "";
  els.pageNotice.hidden = !text;
}

function stampTime(article, created) {
  if (typeof created === "number") article.title = new Date(created * 1000).toLocaleString();
}

function addUserMessage(text, created) {
  const article = els.tplUser.content.firstElementChild.cloneNode(true);
  article.querySelector(".msg-text").textContent = text;
  stampTime(article, created);
  els.messages.append(article);
  follow.watch(article);
  updateEmptyHint();
  return article;
}

function describeImagePrompt(p) {
  const parts = [];
  if (p.width && p.height) parts.push(`${p.width}×${p.height}`);
  if (p.steps) parts.push(`${p.steps} steps`);
  if (p.guidance_scale !== undefined && p.guidance_scale !== null) parts.push(`guidance ${p.guidance_scale}`);
  parts.push(p.seed === null || p.seed === undefined ? "random seed" : `seed ${p.seed}`);
  if (p.sampler) parts.push(`sampler ${p.sampler}`);
  if (p.negative_prompt) parts.push(`negative: ${p.negative_prompt}`);
  return parts.join(" · ");
}

// An image that opens full size in a new tab. A stored URL can fail for a while (the page was reloaded while the
// picture was still rendering) or for good (stopped, or pruned from disk): retry a little, then say so.
const IMAGE_RETRIES = 2;
const IMAGE_RETRY_MS = 3000;

function imageLink(url, prompt) {
  const link = document.createElement("a");
  link.href = url;
  link.target = "_blank";
  link.rel = "noopener";
  link.className = "image-link";
  link.title = "Open the image full size";
  const img = document.createElement("img");
  img.src = url;
  img.alt = prompt && prompt.prompt ? `Generated image: ${prompt.prompt}` : "Generated image";
  img.decoding = "async";
  if (prompt && prompt.width && prompt.height) {
    img.width = prompt.width; // reserves the space before the file arrives (CSS scales it down)
    img.height = prompt.height;
  }
  let failures = 0;
  img.addEventListener("error", () => {
    failures += 1;
    if (failures <= IMAGE_RETRIES) {
      setTimeout(() => { img.src = `${url}?retry=${failures}`; }, IMAGE_RETRY_MS);
      return;
    }
    const missing = document.createElement("p");
    missing.className = "muted image-missing";
    missing.textContent = "This image is not available (stopped, or removed from disk).";
    link.replaceWith(missing);
  });
  link.append(img);
  return link;
}

// One assistant message: reasoning (collapsed), answer, image prompt, progress, images, notices.
class AssistantView {
  constructor() {
    this.el = els.tplAssistant.content.firstElementChild.cloneNode(true);
    this.reasoning = this.el.querySelector(".reasoning");
    this.reasoningText = this.el.querySelector(".reasoning-text");
    this.answer = this.el.querySelector(".answer");
    this.imageBlock = this.el.querySelector(".image-block");
    this.imagePrompt = this.el.querySelector(".image-prompt");
    this.progressBox = this.el.querySelector(".image-progress");
    this.progress = this.el.querySelector("progress");
    this.progressText = this.el.querySelector(".image-progress-text");
    this.imageList = this.el.querySelector(".image-list");
    this.previewBox = this.el.querySelector(".image-preview");
    this.preview = this.previewBox.querySelector("img");
    this.notice = this.el.querySelector(".notice");
    this.prompt = null;
    this.finished = false;
    this.source = ""; // the answer's Markdown as it arrived
    this.frame = 0; // a pending re-render of the answer
  }

  attach() {
    els.messages.append(this.el);
    follow.watch(this.el);
    updateEmptyHint();
    return this;
  }

  setState(value) {
    this.el.dataset.state = value;
    // Screen readers hear the answer once it is complete, not token by token.
    this.el.setAttribute("aria-busy", String(value === "streaming"));
  }

  addReasoning(text) {
    this.reasoning.hidden = false;
    this.reasoningText.append(text);
  }

  addContent(text) {
    if (!text) return;
    this.source += text;
    // One render per frame however many chunks arrive in it (a long answer is parsed again each time).
    if (!this.frame) this.frame = requestAnimationFrame(() => this.renderAnswer());
  }

  renderAnswer() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    renderMarkdown(this.answer, this.source);
  }

  finishAnswer() {
    if (this.finished) return; // image_prompt, done and a stop may each end the answer
    this.finished = true;
    const reasoning = this.reasoningText.textContent.trim();
    if (reasoning !== this.reasoningText.textContent) this.reasoningText.textContent = reasoning;
    this.source = this.source.trim(); // as stored in history
    this.renderAnswer();
    this.answer.dataset.markdown = this.source; // the text as written (what "copy" and the tests read)
    this.answer.classList.toggle("empty", this.source === ""); // CSS says "(no answer text)"
  }

  setImagePrompt(prompt) {
    if (!prompt) return;
    this.prompt = prompt;
    this.imageBlock.hidden = false;
    this.imagePrompt.replaceChildren();
    const label = document.createElement("strong");
    label.textContent = "Image prompt: ";
    const params = document.createElement("span");
    params.className = "muted image-params";
    params.textContent = ` (${describeImagePrompt(prompt)})`;
    this.imagePrompt.append(label, prompt.prompt || "", params);
  }

  showProgress(step, total, fraction) {
    this.imageBlock.hidden = false;
    this.progressBox.hidden = false;
    this.progress.value = Math.round((fraction || 0) * 100);
    this.progressText.textContent = total ? `Rendering: step ${step} of ${total}` : "Waiting for the image…";
  }

  hideProgress() {
    this.progressBox.hidden = true;
  }

  // A rough picture of the image being made (a base64 PNG, a few times smaller than the picture), shown at the
  // picture's size until the picture itself arrives.
  showPreview(base64, step) {
    if (!base64 || this.imageList.childElementCount > 0) return;
    if (this.prompt && this.prompt.width && this.prompt.height) {
      this.preview.width = this.prompt.width;
      this.preview.height = this.prompt.height;
    }
    this.preview.src = `data:image/png;base64,${base64}`;
    this.preview.dataset.step = String(step ?? "");
    this.imageBlock.hidden = false;
    this.previewBox.hidden = false;
  }

  hidePreview() {
    this.previewBox.hidden = true;
    this.preview.removeAttribute("src");
  }

  showImages(urls, prompt) {
    if (!urls || urls.length === 0 || this.imageList.childElementCount > 0) return;
    if (prompt) this.setImagePrompt(prompt);
    this.hideProgress();
    this.hidePreview();
    this.imageBlock.hidden = false;
    for (const url of urls) this.imageList.append(imageLink(url, prompt || this.prompt));
  }

  showNotice(text, kind) {
    this.notice.hidden = false;
    this.notice.textContent = text;
    this.notice.dataset.kind = kind;
    this.notice.setAttribute("role", kind === "error" ? "alert" : "status");
  }
}

function renderStoredAssistant(m) {
  const view = new AssistantView();
  stampTime(view.el, m.created);
  if (m.reasoning) view.addReasoning(m.reasoning);
  view.addContent(m.content || "");
  view.finishAnswer();
  if (m.image_prompt) view.setImagePrompt(m.image_prompt);
  if (m.image_urls && m.image_urls.length > 0) view.showImages(m.image_urls, m.image_prompt);
  view.setState("done");
  view.attach();
}

// ---------------------------------------------------------------------------------------------------------------
// A chat turn: POST /chat, stream the events into an AssistantView.

// A number input's value within its min and max (an empty or unreadable one: its default).
function numberIn(input, fallback, parse = parseFloat) {
  const value = parse(input.value, 10);
  if (!Number.isFinite(value)) return fallback;
  return Math.min(Number(input.max), Math.max(Number(input.min), value));
}

function imageOptions() {
  const options = {
    steps: numberIn(els.imageSteps, 20, parseInt),
    guidance_scale: numberIn(els.imageCfg, 7.5),
    size: els.imageSize.value || "512x512",
  };
  els.imageSteps.value = String(options.steps); // the fields show what is sent
  els.imageCfg.value = String(options.guidance_scale);
  const seed = parseInt(els.imageSeed.value, 10);
  if (Number.isInteger(seed) && seed >= 0) options.seed = seed;
  if (els.imageSampler.value) options.sampler = els.imageSampler.value;
  const negative = els.imageNegative.value.trim();
  if (negative) options.negative_prompt = negative;
  return options;
}

function chatRequest(message) {
  return {
    user_id: state.userId,
    conversation_id: state.conversationId,
    message,
    image: els.imageMode.value,
    stream: true,
    image_options: imageOptions(),
  };
}

function firstToken(turn) {
  if (turn.ttftMs === null) turn.ttftMs = Math.round(performance.now() - turn.started);
}

const EVENT_HANDLERS = {
  reasoning(turn, data) {
    firstToken(turn);
    turn.view.addReasoning(data.text || "");
  },
  content(turn, data) {
    firstToken(turn);
    turn.view.addContent(data.text || "");
  },
  image_prompt(turn, data) {
    turn.view.finishAnswer(); // the answer is complete once the image starts
    // The sampler asked for (or the model's own) where the server's prompt does not name one.
    const sampler = turn.sampler || (state.options && state.options.image && state.options.image.default_sampler);
    turn.view.setImagePrompt(data.image_prompt && sampler ? { sampler, ...data.image_prompt } : data.image_prompt);
  },
  image_queued(turn, data) {
    turn.jobId = data.job_id;
    turn.view.showProgress(0, 0, 0);
  },
  image_progress(turn, data) {
    turn.view.showProgress(data.step, data.total_steps, data.progress);
    if (data.preview) turn.view.showPreview(data.preview, data.preview_step);
  },
  image_done(turn, data) {
    turn.jobId = null;
    const prompt = turn.view.prompt && data.seeds && data.seeds.length > 0 ?
      { ...turn.view.prompt, seed: data.seeds[0] } : turn.view.prompt;
    turn.view.showImages(data.image_urls, prompt);
  },
  image_error(turn, data) {
    turn.jobId = null;
    turn.view.hideProgress();
    turn.view.hidePreview();
    if (data.code === "cancelled") turn.view.showNotice("Image stopped.", "info");
    else turn.view.showNotice(`No image: ${data.message || data.code}`, "error");
  },
  done(turn, data) {
    turn.done = data;
    turn.view.finishAnswer();
    turn.view.hideProgress();
    if (data.image_generated) turn.view.showImages(data.image_urls, turn.view.prompt && data.image_prompt ?
      { ...turn.view.prompt, ...data.image_prompt } : data.image_prompt);
    showSpeed(data, turn.ttftMs);
    if (data.conversation_id) rememberConversation(data.conversation_id);
  },
  error(turn, data) {
    turn.failed = true;
    const err = (data && data.error) || {};
    turn.view.hideProgress();
    turn.view.showNotice(err.code === "cancelled" ? "Stopped." : `Error: ${err.message || "the answer failed."}`,
      err.code === "cancelled" ? "info" : "error");
  },
};

function handleEvent(turn, name, data) {
  const handler = EVENT_HANDLERS[name];
  if (handler && data && typeof data === "object") handler(turn, data);
}

function setBusy(busy) {
  els.send.disabled = busy;
  els.stop.disabled = !busy;
  els.composer.setAttribute("aria-busy", String(busy));
}

function startTurn() {
  const turn = {
    view: new AssistantView().attach(),
    controller: new AbortController(),
    started: performance.now(),
    ttftMs: null,
    jobId: null,
    done: null,
    failed: false,
    stopping: false,
    stopTimer: null,
  };
  turn.view.setState("streaming");
  state.turn = turn;
  setBusy(true);
  return turn;
}

function endTurn(turn, outcome) {
  clearTimeout(turn.stopTimer);
  turn.view.hideProgress();
  if (turn.view.imageList.childElementCount === 0) turn.view.hidePreview(); // stopped or failed: no half picture
  turn.view.setState(outcome);
  if (state.turn !== turn) return; // the user already moved to another conversation
  state.turn = null;
  setBusy(false);
  // The Stop button just got disabled under the user's focus: give focus back to the message box.
  if (document.activeElement === els.stop || document.activeElement === document.body) els.message.focus();
  loadConversations();
}

async function streamTurn(turn, body) {
  const res = await api("/chat", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify(body),
    signal: turn.controller.signal,
  }, { interactive: true });
  if (!res.ok) {
    turn.view.showNotice(await errorText(res), "error");
    return "error";
  }
  await readEvents(res, (name, data) => handleEvent(turn, name, data));
  if (turn.failed) return "error";
  if (turn.done) return "done";
  turn.view.showNotice("The answer ended early: the connection closed.", "error");
  return "error";
}

async function send() {
  const message = els.message.value.trim();
  if (!message || state.turn) return;
  state.keyDeclined = false; // an explicit action: ask for a key again if one is needed
  showPageNotice("");
  els.message.value = "";
  addUserMessage(message);
  const turn = startTurn();
  let outcome = "error";
  try {
    const body = chatRequest(message);
    turn.sampler = body.image_options.sampler || null;
    outcome = await streamTurn(turn, body);
    if (turn.stopping && outcome === "done") outcome = "stopped"; // the stream wound down after a cancelled image
    if (outcome === "error" && !turn.done && !els.message.value) els.message.value = message; // easy to retry
  } catch (err) {
    if (err.name === "AbortError") {
      outcome = "stopped";
      turn.view.finishAnswer();
      turn.view.showNotice("Stopped.", "info");
    } else {
      turn.view.showNotice(`Could not reach the server: ${err.message}`, "error");
    }
  } finally {
    endTurn(turn, outcome);
  }
}

// Stop: while the LLM writes, aborting the fetch is enough (the server cancels generation on disconnect). While
// the image renders, the server keeps the job running after a disconnect, so cancel the job itself first; the
// stream then ends by itself (image_error "cancelled", then done) and the stored turn records no image.
async function stop() {
  const turn = state.turn;
  if (!turn || turn.stopping) return;
  turn.stopping = true;
  els.stop.disabled = true;
  if (!turn.jobId) {
    turn.controller.abort();
    return;
  }
  turn.stopTimer = setTimeout(() => turn.controller.abort(), STOP_GRACE_MS);
  try {
    const res = await api(`/v1/images/jobs/${encodeURIComponent(turn.jobId)}`, { method: "DELETE" });
    if (!res.ok) turn.controller.abort();
  } catch {
    turn.controller.abort();
  }
}

// Leaving a conversation mid-answer: stop at once, without waiting for the stream to wind down.
function abandonTurn() {
  const turn = state.turn;
  if (!turn) return;
  if (turn.jobId) {
    api(`/v1/images/jobs/${encodeURIComponent(turn.jobId)}`, { method: "DELETE" }).catch(() => {});
  }
  turn.controller.abort();
  state.turn = null;
  setBusy(false);
}

// ---------------------------------------------------------------------------------------------------------------
// Status strip: /ready (models, devices, state) and the speed of the last answer.

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text; // unchanged text must not re-announce the live region
}

function modelLine(label, m) {
  if (!m) return `${label}: none`;
  // "ready" is already said once by the Ready badge; other states (loading, failed) matter per model.
  return `${label}: ${m.model} · ${m.device}${m.state === "ready" ? "" : ` · ${m.state}`}`;
}

function modelTitle(label, m) {
  if (!m) return label;
  if (m.error) return `${label}: ${m.error}`;
  return typeof m.load_seconds === "number" ? `${label}, loaded in ${m.load_seconds.toFixed(1)} s` : label;
}

function renderReady(body) {
  const models = body.models || {};
  const failed = Object.values(models).some((m) => m && m.state === "failed");
  let readiness = "loading";
  if (body.ready) readiness = "ready";
  else if (failed) readiness = "failed";
  const label = { ready: "Ready", failed: "A model failed to load", loading: "Loading models…" }[readiness];
  els.ready.dataset.state = readiness;
  setText(els.ready, label);
  setText(els.llm, modelLine("LLM", models.llm));
  setText(els.image, modelLine("Image", models.image));
  els.llm.title = modelTitle("Language model", models.llm);
  els.image.title = modelTitle("Image model", models.image);
  return readiness;
}

async function pollReady() {
  let readiness = "unreachable";
  try {
    // /ready needs no key, and answers 503 with the same body while models load.
    const res = await fetch("/ready", { cache: "no-store" });
    readiness = renderReady(await res.json());
  } catch {
    els.ready.dataset.state = "unreachable";
    setText(els.ready, "Server unreachable");
  }
  // Once the models are up (again), what they accept is known for sure: ask again.
  // (The first answer is not a change: the start asks at the same time.)
  if (readiness === "ready" && state.readiness !== null && state.readiness !== "ready") loadOptions();
  state.readiness = readiness;
  setTimeout(pollReady, READY_POLL_MS[readiness] || READY_POLL_MS.loading);
}

function showSpeed(done, ttftMs) {
  const usage = done.usage || {};
  const timings = done.timings || {};
  const parts = [];
  if (usage.completion_tokens && timings.llm_s) {
    parts.push(`${(usage.completion_tokens / timings.llm_s).toFixed(1)} tok/s`);
  }
  if (ttftMs !== null) parts.push(`TTFT ${ttftMs} ms`);
  if (typeof timings.image_s === "number") parts.push(`image ${timings.image_s.toFixed(1)} s`);
  els.speed.textContent = parts.length > 0 ? parts.join(" · ") : "No answer yet";
  els.speed.dataset.ttftMs = ttftMs === null ? "" : String(ttftMs);
}

// ---------------------------------------------------------------------------------------------------------------
// What the served models accept (GET /chat/options): the picture controls offer only that; no image model hides
// them; the demo models are labelled as such.

function sizeLabel(size) {
  return size.replace("x", "×");
}

// The size to select among `sizes`: the one wanted if offered, else the model's own size, else the largest square
// up to 512 (quick to render), else the first.
function pickSize(sizes, wanted, native) {
  if (sizes.includes(wanted)) return wanted;
  if (native && sizes.includes(`${native}x${native}`)) return `${native}x${native}`;
  const squares = sizes.filter((s) => { const [w, h] = s.split("x").map(Number); return w === h && w <= 512; });
  return squares.length > 0 ? squares[squares.length - 1] : sizes[0];
}

function setBounds(input, min, max, fallback) {
  if (typeof min === "number") input.min = String(min);
  if (typeof max === "number") input.max = String(max);
  input.value = String(numberIn(input, fallback, input === els.imageSteps ? parseInt : parseFloat));
}

function applyImageOptions(image) {
  if (image.sizes && image.sizes.length > 0) {
    const wanted = load(STORE.imageSize, "") || els.imageSize.value;
    els.imageSize.replaceChildren(...image.sizes.map((s) => new Option(sizeLabel(s), s)));
    els.imageSize.value = pickSize(image.sizes, wanted, image.native_size);
  }
  setBounds(els.imageSteps, 1, image.max_steps, image.default_steps || 20);
  const cfg = image.guidance_scale || {};
  setBounds(els.imageCfg, cfg.min, cfg.max, cfg.default ?? 7.5);
  if (image.samplers) {
    const wanted = load(STORE.imageSampler, "");
    const first = new Option(image.default_sampler ? `Model default (${image.default_sampler})` : "Model default", "");
    els.imageSampler.replaceChildren(first, ...image.samplers.map((s) => new Option(s, s)));
    els.imageSampler.value = image.samplers.includes(wanted) ? wanted : "";
  }
}

function applyOptions(options) {
  state.options = options;
  els.demoBanner.hidden = !options.demo;
  document.body.dataset.demo = String(Boolean(options.demo));
  const image = options.image;
  for (const el of els.pictureControls) el.hidden = !image;
  if (!image) {
    els.imageMode.value = "never"; // not saved: a server with pictures gets the user's choice back
  } else {
    const mode = load(STORE.imageMode, "auto");
    els.imageMode.value = ["auto", "always", "never"].includes(mode) ? mode : "auto";
    applyImageOptions(image);
  }
  document.body.dataset.optionsLoaded = "true";
}

async function loadOptions() {
  try {
    const res = await api("/chat/options");
    if (res.ok) applyOptions(await res.json());
  } catch {
    // Unreachable for now: the controls keep what they offer; the next "ready" asks again.
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Conversations: the current id lives in localStorage; the picker lists the user's conversations.

function historyPath(conversationId) {
  return `/chat/${encodeURIComponent(state.userId)}/history?conversation_id=${encodeURIComponent(conversationId)}`;
}

async function fetchHistory(conversationId) {
  const res = await api(historyPath(conversationId));
  if (!res.ok) throw new Error(await errorText(res));
  return (await res.json()).messages || [];
}

async function loadHistory() {
  const seq = ++state.historySeq;
  clearMessages();
  showPageNotice("");
  let messages;
  try {
    messages = await fetchHistory(state.conversationId);
  } catch (err) {
    if (seq === state.historySeq) showPageNotice(`Could not load the conversation: ${err.message}`);
    return;
  }
  if (seq !== state.historySeq) return;
  for (const m of messages) {
    if (m.role === "user") addUserMessage(m.content, m.created);
    else if (m.role === "assistant") renderStoredAssistant(m);
  }
  updateEmptyHint();
  scrollToBottom();
}

function conversationLabel(c) {
  if (c.title) return c.title.length > 48 ? `${c.title.slice(0, 47)}…` : c.title;
  return c.conversation_id === "default" ? "Default conversation" : "Untitled (empty)";
}

function renderConversationOptions() {
  const list = [...state.conversations];
  if (!list.some((c) => c.conversation_id === state.conversationId)) {
    list.unshift({ conversation_id: state.conversationId, title: null });
  }
  els.conversation.replaceChildren(...list.map((c) => new Option(conversationLabel(c), c.conversation_id)));
  els.conversation.value = state.conversationId;
}

async function loadConversations() {
  try {
    const res = await api(`/chat/${encodeURIComponent(state.userId)}/conversations`);
    if (res.ok) state.conversations = (await res.json()).conversations || [];
  } catch {
    // The picker keeps its last list; the chat still works.
  }
  renderConversationOptions();
}

function rememberConversation(id) {
  if (id === state.conversationId) return;
  state.conversationId = id;
  save(STORE.conversationId, id);
}

function switchConversation(id) {
  abandonTurn();
  rememberConversation(id);
  renderConversationOptions();
  loadHistory();
}

function newConversation() {
  switchConversation(`c-${Date.now().toString(16)}`);
  showTab("chat");
  els.message.focus();
}

// ---------------------------------------------------------------------------------------------------------------
// Gallery: every image in the user's conversations, newest first, with its prompt and parameters.

async function mapLimit(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

async function collectImages() {
  const res = await api(`/chat/${encodeURIComponent(state.userId)}/conversations`);
  if (!res.ok) throw new Error(await errorText(res));
  const conversations = ((await res.json()).conversations || []).slice(0, GALLERY_MAX_CONVERSATIONS);
  const histories = await mapLimit(conversations, GALLERY_PARALLEL,
    (c) => fetchHistory(c.conversation_id).catch(() => []));
  const items = [];
  conversations.forEach((c, i) => {
    for (const m of histories[i]) {
      for (const url of (m.role === "assistant" && m.image_urls) || []) {
        items.push({ url, prompt: m.image_prompt || {}, created: m.created || 0, conversation: c });
      }
    }
  });
  return items.sort((a, b) => b.created - a.created);
}

function paramList(prompt) {
  const dl = document.createElement("dl");
  dl.className = "params";
  const rows = [
    ["Size", prompt.width && prompt.height ? `${prompt.width}×${prompt.height}` : "?"],
    ["Steps", prompt.steps ?? "?"],
    ["Guidance", prompt.guidance_scale ?? "?"],
    ["Seed", prompt.seed ?? "random"],
  ];
  if (prompt.sampler) rows.push(["Sampler", prompt.sampler]);
  if (prompt.negative_prompt) rows.push(["Negative", prompt.negative_prompt]);
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    dl.append(dt, dd);
  }
  return dl;
}

function galleryCard(item) {
  const li = document.createElement("li");
  li.className = "card";
  const text = document.createElement("p");
  text.className = "card-prompt";
  text.textContent = item.prompt.prompt || "(no prompt)";
  const open = document.createElement("button");
  open.type = "button";
  open.className = "link";
  open.textContent = `Open conversation: ${conversationLabel(item.conversation)}`;
  open.addEventListener("click", () => {
    switchConversation(item.conversation.conversation_id);
    showTab("chat");
  });
  li.append(imageLink(item.url, item.prompt), text, paramList(item.prompt), open);
  return li;
}

async function loadGallery() {
  els.galleryStatus.textContent = "Loading images…";
  let items;
  try {
    items = await collectImages();
  } catch (err) {
    els.galleryStatus.textContent = `Could not load the gallery: ${err.message}`;
    return;
  }
  els.gallery.replaceChildren(...items.map(galleryCard));
  els.galleryStatus.textContent = items.length === 0 ? "No images yet." :
    `${items.length} image${items.length === 1 ? "" : "s"}.`;
}

// ---------------------------------------------------------------------------------------------------------------
// Tabs (WAI-ARIA tabs pattern: arrow keys move between them, Tab goes into the panel).

function showTab(name) {
  const gallery = name === "gallery";
  els.tabChat.setAttribute("aria-selected", String(!gallery));
  els.tabGallery.setAttribute("aria-selected", String(gallery));
  els.tabChat.tabIndex = gallery ? -1 : 0;
  els.tabGallery.tabIndex = gallery ? 0 : -1;
  els.chatView.hidden = gallery;
  els.galleryView.hidden = !gallery;
  if (gallery) loadGallery();
}

function onTabKey(event) {
  if (!["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) return;
  event.preventDefault();
  const toGallery = event.key === "End" || (event.key !== "Home" && event.target === els.tabChat);
  showTab(toGallery ? "gallery" : "chat");
  (toGallery ? els.tabGallery : els.tabChat).focus();
}

// ---------------------------------------------------------------------------------------------------------------
// Start-up and wiring.

function restoreImageSettings() {
  const mode = load(STORE.imageMode, "auto");
  if (["auto", "always", "never"].includes(mode)) els.imageMode.value = mode;
  const size = load(STORE.imageSize, "");
  if ([...els.imageSize.options].some((o) => o.value === size)) els.imageSize.value = size;
  // The sampler list comes with the options; the others are free fields, restored now.
  const fields = [[els.imageSteps, STORE.imageSteps], [els.imageCfg, STORE.imageCfg],
    [els.imageNegative, STORE.imageNegative]];
  for (const [input, key] of fields) {
    const value = load(key, "");
    if (value) input.value = value;
  }
  const remember = [[els.imageMode, STORE.imageMode], [els.imageSize, STORE.imageSize],
    [els.imageSampler, STORE.imageSampler], [els.imageNegative, STORE.imageNegative]];
  for (const [input, key] of remember) input.addEventListener("change", () => save(key, input.value));
  // Numbers are kept within what the model takes as they are entered.
  els.imageSteps.addEventListener("change", () => {
    els.imageSteps.value = String(numberIn(els.imageSteps, 20, parseInt));
    save(STORE.imageSteps, els.imageSteps.value);
  });
  els.imageCfg.addEventListener("change", () => {
    els.imageCfg.value = String(numberIn(els.imageCfg, 7.5));
    save(STORE.imageCfg, els.imageCfg.value);
  });
}

function onMessageKey(event) {
  // Enter sends; Shift+Enter inserts a newline; never send in the middle of an IME composition.
  if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
  event.preventDefault();
  if (!state.turn) send();
}

function wire() {
  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  els.message.addEventListener("keydown", onMessageKey);
  els.stop.addEventListener("click", stop);
  els.newConversation.addEventListener("click", newConversation);
  els.conversation.addEventListener("change", () => switchConversation(els.conversation.value));
  els.tabChat.addEventListener("click", () => showTab("chat"));
  els.tabGallery.addEventListener("click", () => showTab("gallery"));
  els.tabChat.addEventListener("keydown", onTabKey);
  els.tabGallery.addEventListener("keydown", onTabKey);
  els.galleryRefresh.addEventListener("click", loadGallery);
  // A plain button, not a submit: Enter in the key field must save (the first submit button is the default).
  els.keyCancel.addEventListener("click", () => els.keyDialog.close("cancel"));
}

function init() {
  els.messages.addEventListener("scroll", () => {
    follow.stick = nearBottom();
  });
  follow.reset();
  state.userId = ensureUserId();
  state.conversationId = load(STORE.conversationId, "default");
  if (!/^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$/.test(state.conversationId)) state.conversationId = "default";
  document.body.dataset.userId = state.userId;
  restoreImageSettings();
  wire();
  setBusy(false);
  renderConversationOptions();
  updateEmptyHint();
  pollReady();
  resolveUser().then(() => Promise.all([loadOptions(), loadHistory()])).then(() => loadConversations());
}

init();
