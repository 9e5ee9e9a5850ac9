"""Tool calling in the engine: tools into the prompt, earlier calls and their results into the history, and the
structured-output constraint that makes every call the model writes valid.

One call format for every model, Hermes' (Qwen2.5's and Qwen3's own)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A chat template that writes this format itself (it names ``<tool_call>`` and takes ``tools``) is given the tools;
any other template gets them in a system prompt in the same words Qwen's template uses (llama.cpp's "generic"
approach). Earlier calls go back into the history in the same format, tool results as ``<tool_response>`` blocks in a
user message, as Qwen's template writes them, so every template renders them.

Each call is constrained by openvino-genai's structural tags: once the model writes ``<tool_call>``, the name must be
one of the tools and the arguments must match that tool's parameters schema. The arguments grammar is written here
for the schemas tools use (objects, strings, numbers, booleans, enums, arrays, nested objects, ``anyOf``), with
fixed whitespace and every string and array bounded so that a call ends within the request's tokens; a
schema beyond that subset (``$ref``, ``pattern``, numeric ranges) is handed to the grammar compiler as JSON schema
(valid, but not bounded). ``tool_choice`` ``required`` or a named function makes the answer calls only; a reasoning
model thinks freely first.
"""

from __future__ import annotations

import json
from typing import Any

from aipc_chat.engines.contract import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolConstraint, ToolSet
from aipc_chat.reasoning import partial_tag_suffix

CALL_OPEN, CALL_CLOSE = TOOL_CALL_OPEN, TOOL_CALL_CLOSE
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
# A string's character costs at most 2 tokens (a plain one takes part of a token or one; an escape, two). A byte-level
# tokenizer may spend up to 4 tokens on one non-ASCII character: a call of long non-ASCII strings near the token
# limit can still be cut off (then it is dropped, and the reply ends with finish_reason "length").
TOKENS_PER_CHAR = 2
_CAPS = (256, 128, 64, 32, 16, 8, 4, 2, 1, 0)  # the longest a string may be, tried from the top until a call fits
_ARRAY_ITEMS = 8  # arrays hold at most this many items (fewer when strings are short)
_INTEGER = ('"-"? ("0" | [1-9] [0-9]{0,11})', 13)  # JSON: no leading zeros
_NUMBER = ('"-"? ("0" | [1-9] [0-9]{0,11}) ("." [0-9]{1,6})?', 1 + 12 + 1 + 6)
_IGNORED = {"description", "title", "default", "examples", "$schema", "$comment", "format", "additionalProperties",
            "strict", "deprecated", "readOnly", "writeOnly", "nullable"}


# --- the prompt ----------------------------------------------------------------------------------------------------


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """One call as the model writes it."""
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CALL_CLOSE}"


def plain_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with earlier calls written into the assistant's text and tool results as user messages (each
    run of results in one, as Qwen's template joins them): what every chat template can render."""
    out: list[dict[str, Any]] = []
    results: list[str] = []
    for message in messages:
        if message["role"] == "tool":
            results.append(f"{RESPONSE_OPEN}\n{message.get('content') or ''}\n{RESPONSE_CLOSE}")
            continue
        if results:
            out.append({"role": "user", "content": "\n".join(results)})
            results = []
        calls = message.get("tool_calls")
        if message["role"] == "assistant" and calls:
            text = "\n".join([message.get("content") or "", *(call_text(c["name"], c["arguments"]) for c in calls)])
            out.append({"role": "assistant", "content": text.strip()})
        else:
            out.append({"role": message["role"], "content": message.get("content") or ""})
    if results:
        out.append({"role": "user", "content": "\n".join(results)})
    return out


def writes_tool_calls(chat_template: str) -> bool:
    """Whether the chat template itself offers tools in the Hermes format (Qwen2.5, Qwen3)."""
    return CALL_OPEN in chat_template and "tools" in chat_template


def tool_dicts(tools: ToolSet) -> list[dict[str, Any]]:
    """The tools the model is offered, in OpenAI's shape (what chat templates read)."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": json.loads(t.parameters)}} for t in tools.offered]


def system_prompt(tools: ToolSet) -> str:
    """The generic tool prompt, in the words of Qwen2.5's template."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tool_dicts(tools))
    rule = {"auto": "", "required": "\nYou must call at least one function.",
            }.get(tools.choice, f"\nYou must call the function {tools.function}.")
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            f"{listed}\n</tools>\n\nFor each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' + rule)


def with_tool_prompt(messages: list[dict[str, Any]], tools: ToolSet) -> list[dict[str, Any]]:
    """The messages with the generic tool prompt in the system message (after any the client sent)."""
    prompt = system_prompt(tools)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{prompt}"}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


# --- the constraint ------------------------------------------------------------------------------------------------


def call_begin(name: str) -> str:
    """What the grammar writes of a call before its arguments."""
    return f'{CALL_OPEN}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": '


CALL_END = "}\n" + CALL_CLOSE


def tool_constraint(tools: ToolSet, max_tokens: int, *, think_first: bool) -> ToolConstraint:
    """The grammar of the request's calls: each offered tool's arguments, bounded to ``max_tokens`` a call."""
    calls = []
    needed = 0
    for tool in tools.offered:
        wrapper = len((call_begin(tool.name) + CALL_END).encode()) + 2  # and the line before it
        schema = json.loads(tool.parameters)
        if isinstance(schema, dict) and "type" not in schema:  # parameters are an object, whether it says so or not
            schema = {"type": "object", **schema}
        bounded = bounded_arguments(schema, max_tokens - wrapper)
        if bounded is None:
            calls.append((tool.name, "json_schema", tool.parameters))
        else:
            calls.append((tool.name, "ebnf", bounded[0]))
            needed = max(needed, wrapper + bounded[1])
    return ToolConstraint(tuple(calls), at_least_one=tools.choice != "auto", parallel=tools.parallel,
                          think_first=think_first, tokens=needed)


def structural_tags(constraint: ToolConstraint) -> Any:
    """openvino-genai's structural tags for a ToolConstraint."""
    import openvino_genai as ov_genai

    so = ov_genai.StructuredOutputConfig
    tags = [so.Tag(call_begin(name), so.EBNF(text) if kind == "ebnf" else so.JSONSchema(text), CALL_END)
            for name, kind, text in constraint.calls]
    if constraint.at_least_one:  # calls only, one a line
        calls = so.TagsWithSeparator(tags, "\n", at_least_one=True, stop_after_first=not constraint.parallel)
    else:  # free text; a call wherever the model writes <tool_call>
        calls = so.TriggeredTags(triggers=[CALL_OPEN], tags=tags, stop_after_first=not constraint.parallel)
    if constraint.think_first:  # the prompt opened the think block: free reasoning, its end, then the calls
        return so.Concat(so.Tag("", so.AnyText(), "</think>"), so.ConstString("\n\n"), calls)
    return calls


class _Unsupported(Exception):
    """The schema uses what the bounded grammar does not write."""


def bounded_arguments(schema: Any, max_tokens: int) -> tuple[str, int] | None:
    """An EBNF grammar for JSON matching ``schema`` that takes at most ``max_tokens`` tokens (a literal's bytes, and
    ``TOKENS_PER_CHAR`` a string character), with the longest strings that fit (the shortest there are when none
    fits), and the most tokens it can take; None when the schema is beyond the subset written here."""
    for cap in _CAPS:
        builder = _Grammar(cap)
        try:
            root, longest = builder.value(schema)
        except (_Unsupported, TypeError, ValueError, OverflowError):  # malformed keywords: the compiler's to judge
            return None
        if longest <= max_tokens or cap == _CAPS[-1]:
            break
    return "\n".join([f"root ::= {root}", *(f"{name} ::= {body}" for name, body in builder.rules.items()),
                      'char ::= [^"\\\\\\x00-\\x1f] | "\\\\" ["\\\\/bfnrt]']), longest


def _literal(text: str) -> str:
    """An EBNF string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _Grammar:
    """Builds the rules of one schema; each value is (expression, the most tokens it can take)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.items = max(1, min(_ARRAY_ITEMS, cap // 4))  # arrays shrink with the strings
        self.rules: dict[str, str] = {}

    def rule(self, body: str) -> str:
        name = f"v{len(self.rules)}"
        self.rules[name] = body
        return name

    def value(self, schema: Any) -> tuple[str, int]:
        if schema is True or schema == {}:
            return self.any_scalar()
        if not isinstance(schema, dict):
            raise _Unsupported
        schema = {k: v for k, v in schema.items() if k not in _IGNORED}
        for choice in ("enum", "const"):
            if choice in schema:
                values = schema[choice] if choice == "enum" else [schema[choice]]
                if not isinstance(values, list) or not values:
                    raise _Unsupported
                texts = [json.dumps(v, ensure_ascii=False) for v in values]
                return "(" + " | ".join(_literal(t) for t in texts) + ")", max(len(t.encode()) for t in texts)
        if "anyOf" in schema:
            if set(schema) != {"anyOf"} or not isinstance(schema["anyOf"], list) or not schema["anyOf"]:
                raise _Unsupported
            return self.union([self.value(s) for s in schema["anyOf"]])
        kind = schema.get("type")
        if kind is None and "properties" in schema:
            kind = "object"
        if isinstance(kind, list):
            return self.union([self.value({**schema, "type": k}) for k in kind])
        return self.typed(kind, schema)

    def union(self, options: list[tuple[str, int]]) -> tuple[str, int]:
        return "(" + " | ".join(expr for expr, _ in options) + ")", max(n for _, n in options)

    def any_scalar(self) -> tuple[str, int]:
        string, n = self.string({})
        return f'({string} | {_NUMBER[0]} | "true" | "false" | "null")', max(n, _NUMBER[1])

    def typed(self, kind: Any, schema: dict[str, Any]) -> tuple[str, int]:
        known = {"type"} | {"string": {"minLength", "maxLength"}, "integer": {"minimum"}, "number": {"minimum"},
                            "array": {"items", "minItems", "maxItems"}, "object": {"properties", "required"},
                            }.get(kind, set())
        if set(schema) - known:
            raise _Unsupported
        if kind == "string":
            return self.string(schema)
        if kind in ("integer", "number"):
            expr, n = _INTEGER if kind == "integer" else _NUMBER
            minimum = schema.get("minimum")
            if minimum is None:
                return expr, n
            if minimum != 0:  # only "not negative" is written here
                raise _Unsupported
            return expr.removeprefix('"-"? '), n - 1
        if kind == "boolean":
            return '("true" | "false")', 5
        if kind == "null":
            return '"null"', 4
        if kind == "array":
            return self.array(schema)
        if kind == "object":
            return self.object(schema)
        raise _Unsupported

    def string(self, schema: dict[str, Any]) -> tuple[str, int]:
        low = int(schema.get("minLength", 0))
        high = min(int(schema.get("maxLength", self.cap)), self.cap)
        high = max(high, low)
        return f'"\\"" char{{{low},{high}}} "\\""', 2 + TOKENS_PER_CHAR * high

    def array(self, schema: dict[str, Any]) -> tuple[str, int]:
        item, size = self.value(schema.get("items", {}))
        low = int(schema.get("minItems", 0))
        high = max(low, min(int(schema.get("maxItems", self.items)), self.items))
        name = self.rule(item)
        if high == 0:
            return '"[]"', 2
        rest = f'(", " {name}){{{max(low - 1, 0)},{high - 1}}}'
        body = f'"[" {name} {rest} "]"'
        if low == 0:
            body = f'("[]" | {body})'
        return body, 2 + high * size + 2 * (high - 1)

    def object(self, schema: dict[str, Any]) -> tuple[str, int]:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        if (not isinstance(properties, dict) or not isinstance(required, list)
                or not all(isinstance(key, str) for key in required) or set(required) - set(properties)):
            raise _Unsupported
        pairs = []
        total = 2
        for key, sub in properties.items():
            value, size = self.value(sub)
            key_text = json.dumps(key, ensure_ascii=False) + ": "
            pairs.append((self.rule(f"{_literal(key_text)} {value}"), key in required))
            total += len(key_text.encode()) + size + 2
        if not pairs:
            return '"{}"', 2
        # after[i]: the pairs from i on once one has been written; fresh: the pairs from i on when none has been
        # yet (an expression that writes at least one pair, and whether writing none is allowed too)
        after = [""] * (len(pairs) + 1)
        for i in range(len(pairs) - 1, -1, -1):
            name, needed = pairs[i]
            piece = f'", " {name}' if needed else f'(", " {name})?'
            after[i] = f"{piece} {after[i + 1]}".strip()
        fresh: str | None = None
        may_be_empty = True
        for i in range(len(pairs) - 1, -1, -1):
            name, needed = pairs[i]
            first = f"{name} {after[i + 1]}".strip()
            if needed:
                fresh, may_be_empty = self.rule(first), False
            else:
                fresh = self.rule(first if fresh is None else f"{first} | {fresh}")
        assert fresh is not None
        return (f'"{{" ({fresh})? "}}"' if may_be_empty else f'"{{" {fresh} "}}"'), total


# --- the end of a reply ----------------------------------------------------------------------------------------------


class RepeatedCallStop:
    """Ends a reply whose model starts a call it has already made in it: a model not trained for tools (SmolLM2,
    the demo models) repeats its call until the token limit when it may make several. The repeat is not sent.

    The same interface as ``reasoning.StopMatcher`` (``feed``, ``finish``, ``hit``), applied to the answer."""

    def __init__(self) -> None:
        self.hit = False
        self._text = ""  # the answer so far
        self._sent = 0  # how much of it has been handed on
        self._scanned = 0  # where the next call may begin
        self._calls: set[str] = set()

    def feed(self, text: str) -> str:
        """What of ``text`` can be sent now: a call is held back until it is whole, and a repeated one ends it."""
        if self.hit:
            return ""
        self._text += text
        upto = len(self._text) - partial_tag_suffix(self._text, CALL_OPEN)
        while (start := self._text.find(CALL_OPEN, self._scanned)) >= 0:
            end = self._text.find(CALL_CLOSE, start)
            if end < 0:
                upto = start  # a call being written
                break
            call = self._text[start + len(CALL_OPEN):end].strip()
            if call in self._calls:
                self.hit, upto = True, start
                break
            self._calls.add(call)
            self._scanned = end + len(CALL_CLOSE)
        out, self._sent = self._text[self._sent:max(upto, self._sent)], max(upto, self._sent)
        return out

    def finish(self) -> str:
        """What was held back, at the end of the reply."""
        rest = "" if self.hit else self._text[self._sent:]
        self._sent = len(self._text)
        return rest


class AnswerStops:
    """Several answer stops as one: text passes each in turn; any one's hit ends the reply."""

    def __init__(self, *stops: Any) -> None:
        self.stops = stops

    @property
    def hit(self) -> bool:
        """Whether one of them ended the reply."""
        return any(stop.hit for stop in self.stops)

    def feed(self, text: str) -> str:
        """What can be sent now."""
        for stop in self.stops:
            text = stop.feed(text)
        return text

    def finish(self) -> str:
        """What was held back, at the end."""
        text = ""
        for stop in self.stops:
            text = stop.feed(text) + stop.finish()
        return text
