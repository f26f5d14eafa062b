"""Structured outputs: `response_format` and `tools` as grammars the engine enforces while it decodes
(engine/constraint.py; the supported JSON Schema subset and the grammars are described in docs/structured-outputs.md).

- `json_object`: any JSON object. `json_schema`: an instance of the schema (with `strict: true`, a keyword the
  grammar library does not implement is a 400 naming it; without, such keywords are ignored and the rest enforced).
- tools, `tool_choice` "required" or a named function: a `<tool_call>[...]</tool_call>` block (the format the
  prompt asks for, tools.py) whose calls name declared functions with arguments valid against their `parameters`.
  "auto": either that block or a text answer that never opens one (the `response_format`'s JSON when one is given).

JSON is written the way the model writes it unprompted (`{"a": 1, "b": 2}`: one optional space after `:` and `,`,
no newlines), which keeps a small model on its trained path and rules out a run of whitespace to max_tokens.
The tool grammars start after the assistant prefill of the plan (tools.assistant_prefix), so forcing a call costs
no decode steps for the text every call starts with.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator, SchemaError

from ..domain import Grammar
from ..engine.constraint import check_grammar
from .protocol import ResponseFormat
from .tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, FunctionDef, ToolSpec
from .validation import ProtocolError

__all__ = ["JSON_STYLE", "chat_grammar", "response_schema", "tool_grammar"]

JSON_STYLE: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ?", "key_separator": ": ?"}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[(.*?)\]")


def _styled(schema: dict[str, Any], lenient: bool) -> dict[str, Any]:
    """The schema to enforce: closed (see _closed), with our JSON layout (and leniency) in llguidance's top-level
    `x-guidance` options."""
    options = dict(JSON_STYLE)
    if lenient:
        options["lenient"] = True
    given = schema.get("x-guidance")
    if isinstance(given, dict):
        options.update(given)
    return {**_closed(schema), "x-guidance": options}


_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")


def _closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on each object that lists `properties` and says nothing about
    other keys, as xgrammar's strict mode does for vLLM: the model writes only declared properties. Every output is
    still an instance of the original schema (an instance never needs an undeclared key), and a small model can no
    longer wander into inventing keys until max_tokens. Left open where closing could exclude every instance:
    `allOf` anywhere (properties merge across branches), `$ref` beside `properties`, `minProperties`, or a
    `required` name that `properties` does not list."""
    if not isinstance(schema, dict) or '"allOf"' in json.dumps(schema):
        return schema
    return _close(schema)


def _close(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            out[key] = {k: _close(v) for k, v in node[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(node.get(key), list):
            out[key] = [_close(v) for v in node[key]]
    if isinstance(node.get("items"), dict):
        out["items"] = _close(node["items"])
    props = node.get("properties")
    required = node.get("required", [])
    open_keys = {"additionalProperties", "patternProperties", "minProperties", "$ref"} & node.keys()
    if isinstance(props, dict) and not open_keys and isinstance(required, list) and all(r in props for r in required):
        out["additionalProperties"] = False
    return out


def _problem(schema: dict[str, Any], lenient: bool) -> str | None:
    """Why `schema` cannot be enforced: not a valid JSON Schema (2020-12 metaschema), or beyond the supported subset
    (llguidance's verdict, e.g. an unimplemented keyword). None when it compiles."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"not a valid JSON Schema: {exc.message}" + (f" (at '{where}')" if where else "")
    problem = check_grammar(Grammar("json_schema", json.dumps(_styled(schema, lenient))))
    if problem is None:
        return None
    m = _UNIMPLEMENTED.search(problem)
    if m:
        keys = ", ".join(k.strip().strip('"') for k in m.group(1).split(","))
        return f"these JSON Schema keywords are not supported by constrained decoding: {keys}"
    return f"not supported by constrained decoding: {problem.strip().splitlines()[-1]}"


def response_schema(rf: ResponseFormat) -> dict[str, Any] | None:
    """The schema the answer must follow for `response_format`, with our layout; None for plain text. Raises the
    400 for a schema that is invalid or (with strict) unsupported."""
    if rf.type == "text":
        return None
    if rf.type == "json_object" or not rf.schema:
        return _styled(ANY_OBJECT, False)
    lenient = rf.strict is not True
    problem = _problem(rf.schema, lenient)
    if problem is not None:
        raise ProtocolError(
            f"Invalid schema for response_format '{rf.name}': {problem}", "response_format.json_schema.schema",
            "invalid_json_schema",
        )
    return _styled(rf.schema, lenient)


def _parameters(fn: FunctionDef, index: int) -> dict[str, Any]:
    """A function's arguments schema, with our layout; raises the 400 for an invalid or (strict) unsupported one."""
    schema = fn.parameters or ANY_OBJECT
    lenient = fn.strict is not True
    problem = _problem(schema, lenient)
    if problem is not None:
        raise ProtocolError(
            f"Invalid schema for function '{fn.name}': {problem}", f"tools[{index}].function.parameters",
            "invalid_function_parameters",
        )
    return _styled(schema, lenient)


def _lit(text: str) -> str:
    """A Lark string literal (JSON's escaping is Lark's)."""
    return json.dumps(text, ensure_ascii=False)


def tool_grammar(spec: ToolSpec, text_schema: dict[str, Any] | None = None) -> Grammar:
    """The grammar of the model's answer after the plan's prefill (tools.assistant_prefix) for `spec`.

    A call is `{"name": "<f>", "arguments": <args of f>}`; a block is `<tool_call>[call, call]</tool_call>` (one
    call when parallel calls are off or the request is legacy `functions`). `text_schema`: in auto mode, the text
    alternative is JSON of this schema instead of free text."""
    rules: list[str] = []
    names: list[str] = []
    for i, fn in enumerate(spec.functions):
        rule = f"f{i}"
        names.append(rule)
        rules.append(f"{rule}_args: %json {json.dumps(_parameters(fn, i), ensure_ascii=False)}")
        tail, head = _lit(fn.name + '", "arguments": '), _lit('{"name": "')
        rules.append(f'{rule}_tail: {tail} {rule}_args "}}"')
        rules.append(f"{rule}: {head} {rule}_tail")
    rules.append("call: " + " | ".join(names))
    more = ' ("," " "? call)*' if spec.max_calls is None else ""
    close = _lit("]" + TOOL_CALL_CLOSE)
    if spec.mode == "named":
        index = next(i for i, fn in enumerate(spec.functions) if fn.name == spec.forced_name)
        start = f'start: f{index}_args "}}" {close}'  # prefill: <tool_call>[{"name": "f", "arguments": '
    elif spec.mode == "required":
        start = f"start: ({' | '.join(n + '_tail' for n in names)}){more} {close}"  # prefill: ...{"name": "
    else:
        block = f"block: {_lit(TOOL_CALL_OPEN + '[')} call{more} {close}"
        rules.append(block)
        if text_schema is not None:
            rules.append(f"answer: %json {json.dumps(text_schema, ensure_ascii=False)}")
        else:  # any text that never opens a call: a `<tool_call>` must be the start of a valid block
            rules.append(f"answer: TEXT\nTEXT: /(?s:.*)/ & ~/(?s:.*){TOOL_CALL_OPEN}(?s:.*)/")
        start = "start: answer | block"
    return Grammar("lark", "\n".join([start, *rules]) + "\n")


def chat_grammar(rf: ResponseFormat, spec: ToolSpec | None) -> Grammar | None:
    """The grammar of a chat answer (after the plan's prefill), or None when nothing constrains it. Raises the
    400s for bad schemas."""
    schema = response_schema(rf)
    if spec is not None:
        grammar = tool_grammar(spec, schema)
    elif schema is not None:
        grammar = Grammar("json_schema", json.dumps(schema, ensure_ascii=False))
    else:
        return None
    problem = check_grammar(grammar)
    if problem is not None:  # each schema compiled alone above; what is left would be our grammar's fault
        raise ProtocolError(f"Invalid request: the output grammar does not compile: {problem}", None,
                            "invalid_value")
    return grammar
