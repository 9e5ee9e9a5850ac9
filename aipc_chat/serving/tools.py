"""Tool calls out of the answer's text: ``ToolCallReader`` takes the answer as it streams and gives back the plain
text and each ``<tool_call>`` block as a parsed call, so no call markup reaches a client (the format is
``engines/tools.py``'s). The routes format the calls for their API."""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from aipc_chat.engines.contract import TOOL_CALL_CLOSE as CALL_CLOSE
from aipc_chat.engines.contract import TOOL_CALL_OPEN as CALL_OPEN
from aipc_chat.reasoning import partial_tag_suffix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolCall:
    """One call the model made."""

    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        """The arguments as OpenAI sends them: a JSON string."""
        return json.dumps(self.arguments, ensure_ascii=False)


def new_call_id() -> str:
    """An id in OpenAI's form."""
    return f"call_{secrets.token_hex(12)}"


def parse_call(block: str) -> ToolCall | None:
    """A call from the text inside one ``<tool_call>`` block, or None when it is not one."""
    try:
        data = json.loads(block)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), data["name"], arguments)


def _unfinished(block: str) -> bool:
    """Whether a call's JSON has not ended yet (the text stops inside it), as opposed to not being JSON."""
    try:
        json.loads(block)
    except json.JSONDecodeError as exc:
        return exc.msg.startswith("Unterminated string") or exc.pos >= len(block.rstrip())
    return False


def _held(text: str) -> int:
    """How many characters at the end of ``text`` may begin a call (a partial ``<tool_call>``, or white space
    that only separates calls): they wait for what follows."""
    size = partial_tag_suffix(text, CALL_OPEN)
    head = text[:len(text) - size]
    return size + len(head) - len(head.rstrip())


class ToolCallReader:
    """Splits an answer into text and calls as it arrives; ``feed`` each piece, then ``end``."""

    def __init__(self) -> None:
        self._pending = ""  # text not yet given out: a possible call start, or a call being written
        self._inside = False
        self._from = 0  # where in a call being written its end may be (past a "</tool_call>" inside a string)
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """The plain text and the calls completed by this piece."""
        self._pending += text
        out: list[str] = []
        calls: list[ToolCall] = []
        while True:
            if not self._inside:
                start = self._pending.find(CALL_OPEN)
                if start < 0:
                    keep = _held(self._pending)
                    out.append(self._pending[:len(self._pending) - keep])
                    self._pending = self._pending[len(self._pending) - keep:]
                    break
                before = self._pending[:start]
                out.append(before.rstrip())  # the white space before a call is not text
                self._pending, self._inside = self._pending[start + len(CALL_OPEN):], True
            else:
                end = self._pending.find(CALL_CLOSE, self._from)
                if end < 0:
                    break
                call = parse_call(self._pending[:end])
                if call is None and _unfinished(self._pending[:end]):  # "</tool_call>" inside a string: read on
                    self._from = end + len(CALL_CLOSE)
                    continue
                block, self._pending = self._pending[:end], self._pending[end + len(CALL_CLOSE):]
                self._inside, self._from = False, 0
                if call is None:
                    log.warning("a <tool_call> block that is not a call was dropped: %.200r", block)
                else:
                    calls.append(call)
        self.calls.extend(calls)
        return "".join(out), calls

    def end(self) -> str:
        """The text still held back; a call cut off (the reply ran out of tokens) is dropped."""
        pending, self._pending = self._pending, ""
        if self._inside:
            log.info("a tool call cut off by the token limit was dropped")
            return ""
        return "" if self.calls else pending

    def split(self, text: str) -> tuple[str, list[ToolCall]]:
        """A whole answer at once: its text (stripped) and its calls."""
        head, calls = self.feed(text)
        return (head + self.end()).strip(), calls
