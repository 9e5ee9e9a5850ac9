"""Tool calling's plain parts: the history and prompt it writes, the bounded arguments grammar, the reader that takes
calls out of the answer (whole or in any pieces), the stop on a repeated call, and the request fields' checks."""

from __future__ import annotations

import json
import re

import pytest

from aipc_chat.api.schemas.common import NamedToolChoice, ToolDef, tool_set
from aipc_chat.engines.contract import Tool, ToolSet
from aipc_chat.engines.tools import (
    AnswerStops,
    RepeatedCallStop,
    bounded_arguments,
    call_text,
    plain_history,
    system_prompt,
    tool_constraint,
    with_tool_prompt,
    writes_tool_calls,
)
from aipc_chat.errors import InvalidRequest
from aipc_chat.reasoning import StopMatcher
from aipc_chat.serving.tools import ToolCallReader, parse_call


def arguments_grammar(schema: object, max_tokens: int) -> str | None:
    bounded = bounded_arguments(schema, max_tokens)
    return bounded[0] if bounded is not None else None


WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"]}


def tools(*names: str, choice: str = "auto", parallel: bool = True) -> ToolSet:
    mode = choice if choice in ("auto", "required") else "function"
    return ToolSet(tuple(Tool(n, f"the {n} tool", json.dumps(WEATHER)) for n in names), mode, parallel,  # type: ignore[arg-type]
                   None if mode != "function" else choice)


def test_history_writes_calls_and_results_as_text_every_template_renders() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "name": "get_weather", "arguments": {"city": "Paris"}},
            {"id": "b", "name": "get_weather", "arguments": {"city": "Rome"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "18 C"},
        {"role": "tool", "tool_call_id": "b", "content": "25 C"},
        {"role": "assistant", "content": "Paris 18 C, Rome 25 C."},
    ]
    out = plain_history(messages)
    assert [m["role"] for m in out] == ["user", "assistant", "user", "assistant"]
    assert out[1]["content"] == "\n".join([call_text("get_weather", {"city": "Paris"}),
                                           call_text("get_weather", {"city": "Rome"})])
    assert out[2]["content"] == "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n25 C\n</tool_response>"
    assert all(isinstance(m["content"], str) for m in out)


def test_generic_prompt_lists_the_offered_tools_and_the_format() -> None:
    named = tools("get_weather", "get_time", choice="get_time")
    prompt = system_prompt(named)
    assert '"name": "get_time"' in prompt and '"name": "get_weather"' not in prompt
    assert "<tool_call>" in prompt and "You must call the function get_time." in prompt
    merged = with_tool_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                              named)
    assert merged[0]["content"].startswith("Be brief.\n\n# Tools") and len(merged) == 2
    assert with_tool_prompt([{"role": "user", "content": "hi"}], named)[0]["role"] == "system"


def test_templates_that_write_hermes_calls_are_told_apart() -> None:
    assert writes_tool_calls("{% if tools %}...<tool_call>\n{{ tool_call | tojson }}...{% endif %}")
    assert not writes_tool_calls("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}")


def test_arguments_grammar_covers_the_tool_subset_and_refuses_the_rest() -> None:
    grammar = arguments_grammar(WEATHER, 400)
    assert grammar is not None
    assert '"\\"celsius\\""' in grammar and "char{0," in grammar  # the enum as literals; strings bounded
    nested = {"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}},
        "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]}, "flag": {"type": "boolean"}}}
    assert arguments_grammar(nested, 2000) is not None
    for beyond in ({"$ref": "#/$defs/X"}, {"type": "string", "pattern": "^a"},
                   {"type": "integer", "minimum": 1, "maximum": 9}, {"oneOf": [{"type": "string"}]}):
        assert arguments_grammar({"type": "object", "properties": {"x": beyond}}, 2000) is None


def test_arguments_grammar_shrinks_strings_to_fit_the_tokens() -> None:
    def longest_string(grammar: str | None) -> int:
        assert grammar is not None
        return max(int(n) for n in re.findall(r"char\{\d+,(\d+)\}", grammar))

    assert longest_string(arguments_grammar(WEATHER, 2000)) == 256
    assert longest_string(arguments_grammar(WEATHER, 60)) < 32
    assert longest_string(arguments_grammar(WEATHER, 10)) == 0  # nothing fits: the shortest there are


def test_the_constraint_offers_only_the_chosen_tool() -> None:
    constraint = tool_constraint(tools("get_weather", "get_time", choice="get_time"), 500, think_first=True)
    assert [name for name, _, _ in constraint.calls] == ["get_time"]
    assert constraint.at_least_one and constraint.think_first
    auto = tool_constraint(tools("get_weather"), 500, think_first=False)
    assert not auto.at_least_one and auto.calls[0][1] == "ebnf"


CALLS = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 17, len(CALLS)])
def test_the_reader_gives_the_same_text_and_calls_in_any_pieces(size: int) -> None:
    reader = ToolCallReader()
    text = [reader.feed(CALLS[i:i + size])[0] for i in range(0, len(CALLS), size)]
    text.append(reader.end())
    assert "".join(text) == "Let me look."
    assert [(c.name, c.arguments) for c in reader.calls] == [("get_weather", {"city": "Paris"}),
                                                             ("get_time", {"zone": "CET"})]
    assert len({c.id for c in reader.calls}) == 2 and all(c.id.startswith("call_") for c in reader.calls)


def test_the_reader_drops_a_call_cut_off_and_keeps_text_that_only_looks_like_one() -> None:
    assert ToolCallReader().split('Sure <tool_call>\n{"name": "f", "argu') == ("Sure", [])
    assert ToolCallReader().split("a <tool b < c") == ("a <tool b < c", [])
    assert ToolCallReader().split("ends with <tool_") == ("ends with <tool_", [])
    assert parse_call('{"name": "f", "arguments": "{\\"a\\": 1}"}') is not None  # arguments as a JSON string
    assert parse_call('{"arguments": {}}') is None and parse_call("not json") is None


def test_a_repeated_call_ends_the_answer_before_it() -> None:
    one = call_text("f", {"a": 1})
    stop = RepeatedCallStop()
    sent = "".join(stop.feed(piece) for piece in [one[:9], one[9:] + "\n", call_text("f", {"a": 2}) + "\n",
                                                  one[:20], one[20:] + " more"])
    assert stop.hit
    assert sent + stop.finish() == f"{one}\n{call_text('f', {'a': 2})}\n"
    fresh = RepeatedCallStop()
    assert fresh.feed("plain text") == "plain text" and not fresh.hit and fresh.finish() == ""


def test_answer_stops_chain_a_stop_string_and_the_repeat_stop() -> None:
    stops = AnswerStops(StopMatcher(("STOP",)), RepeatedCallStop())
    assert stops.feed("hello ST") == "hello " and not stops.hit
    assert stops.feed("OP and more") == "" and stops.hit


def test_tool_choice_is_checked_against_the_tools() -> None:
    defs = [ToolDef.model_validate({"function": {"name": "get_weather", "parameters": WEATHER}})]
    assert tool_set(defs, None, True) == ToolSet((Tool("get_weather", "", json.dumps(WEATHER)),), "auto", True)
    assert tool_set(defs, "none", True) is None
    named = tool_set(defs, NamedToolChoice(function={"name": "get_weather"}), False)
    assert named is not None and named.function == "get_weather" and not named.parallel
    with pytest.raises(InvalidRequest, match="not one of the tools"):
        tool_set(defs, NamedToolChoice(function={"name": "other"}), True)
    with pytest.raises(InvalidRequest, match="needs tools"):
        tool_set(None, "required", True)
    with pytest.raises(InvalidRequest, match="its own name"):
        tool_set(defs * 2, None, True)
    array = [ToolDef.model_validate({"function": {"name": "f", "parameters": {"type": "array"}}})]
    with pytest.raises(InvalidRequest, match="type object"):
        tool_set(array, None, True)


def test_a_close_tag_inside_an_argument_does_not_end_the_call() -> None:
    text = 'x <tool_call>\n{"name": "f", "arguments": {"a": "1</tool_call>2"}}\n</tool_call> after'
    for size in (1, 4, len(text)):
        reader = ToolCallReader()
        out = "".join(reader.feed(text[i:i + size])[0] for i in range(0, len(text), size)) + reader.end()
        assert [(c.name, c.arguments) for c in reader.calls] == [("f", {"a": "1</tool_call>2"})]
        assert out.split() == ["x", "after"]


def test_parameters_without_a_type_are_an_object_and_malformed_ones_go_to_the_compiler() -> None:
    constraint = tool_constraint(ToolSet((Tool("f", "", "{}"),), "function", True, "f"), 300, think_first=False)
    assert constraint.calls[0][1] == "ebnf" and 'root ::= "{}"' in constraint.calls[0][2]
    assert arguments_grammar({"properties": {"a": {"type": "string"}}}, 300) is not None
    for bad in ({"type": "string", "minLength": None}, {"type": "string", "maxLength": 1e400},
                {"type": "object", "properties": {"a": {}}, "required": "a"}):
        assert arguments_grammar({"type": "object", "properties": {"x": bad}}, 300) is None


def test_a_function_named_like_a_mode_is_still_the_one_called() -> None:
    defs = [ToolDef.model_validate({"function": {"name": n}}) for n in ("auto", "other")]
    chosen = tool_set(defs, NamedToolChoice(function={"name": "auto"}), True)
    assert chosen is not None and [t.name for t in chosen.offered] == ["auto"]
    assert tool_constraint(chosen, 300, think_first=False).at_least_one
