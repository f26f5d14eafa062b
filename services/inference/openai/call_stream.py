"""Tool calls read out of a grammar-constrained `<tool_call>` block while it is generated, for streaming them as
OpenAI does: a delta with the call's `index`, `id`, `type` and function `name` (empty `arguments`) as soon as the
name is complete, then the arguments in fragments as they arrive.

Only constrained output is read this way (structured.tool_grammar fixes its layout: `{"name": "<f>", "arguments":
<json>}` items, `,` between them, `]</tool_call>` after the last), so the reader needs no lookahead or repair. The
arguments are passed through with the whitespace between JSON tokens dropped, so the streamed fragments join to
OpenAI's compact `arguments` and the non-streamed body (the same reader, tools.ToolCallOutput) says the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_HEAD = '{"name": "'
_SEP = '", "arguments": '


@dataclass
class StreamedCall:
    id: str
    name: str
    arguments: str = ""  # so far


class CallStream:
    """Feed it the text after `<tool_call>[`; it yields OpenAI tool-call deltas and keeps the calls."""

    def __init__(self, new_id: Callable[[], str]) -> None:
        self._new_id = new_id
        self._state = "head"
        self._matched = 0  # characters of the literal being matched (head, separator)
        self._name: list[str] = []
        self._args: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escape = False
        self.calls: list[StreamedCall] = []  # complete calls, then the one being written (arguments so far)
        self.done = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The deltas for `text` (call heads and argument fragments, in order)."""
        deltas: list[dict[str, Any]] = []
        fragment: list[str] = []

        def flush() -> None:
            if fragment:
                self._args.extend(fragment)
                deltas.append({"index": len(self.calls) - 1, "function": {"arguments": "".join(fragment)}})
                fragment.clear()
                self._update()

        for ch in text:
            if self.done:
                break
            state = self._state
            if state == "head" or state == "sep":
                literal = _HEAD if state == "head" else _SEP
                self._matched += 1 if ch == literal[self._matched] else 0
                if self._matched == len(literal):
                    self._matched = 0
                    self._state = "name" if state == "head" else "args"
            elif state == "name":
                if ch == '"':
                    name = "".join(self._name)
                    self.calls.append(StreamedCall(self._new_id(), name))
                    deltas.append({"index": len(self.calls) - 1, "id": self.calls[-1].id, "type": "function",
                                   "function": {"name": name, "arguments": ""}})
                    self._name.clear()
                    self._args = []
                    self._state, self._matched = "sep", 1  # the closing quote is the separator's first character
                else:
                    self._name.append(ch)
            elif state == "args":
                if self._args_char(ch, fragment):
                    flush()
                    self._state = "close"
            elif state == "close":  # the `}` of the call object
                self._state = "between"
            elif ch == ",":  # between calls
                self._state = "head"
            elif ch == "]":
                self.done = True
        flush()
        return deltas

    def _args_char(self, ch: str, fragment: list[str]) -> bool:
        """Take one character of the arguments; True once the arguments' JSON value has closed."""
        if self._in_string:
            fragment.append(ch)
            if self._escape:
                self._escape = False
            elif ch == "\\":
                self._escape = True
            elif ch == '"':
                self._in_string = False
            return False
        if ch in " \t\r\n":
            return False
        fragment.append(ch)
        if ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            self._depth -= 1
            return self._depth == 0
        return False

    def _update(self) -> None:
        self.calls[-1].arguments = "".join(self._args)
