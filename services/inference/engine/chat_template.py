"""The one chat-template renderer: Hugging Face Jinja templates in a sandbox, as `transformers` renders them.

The engine's tokenizer renders its model's `chat_template.jinja` with it, the Triton backend the template of the
model Triton serves, and `chatml` is the same renderer over ChatML (SmolLM2-Instruct's format) for models
registered without a template. Templates are registry data, hence the sandbox.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

# ChatML, the template of SmolLM2 and most instruct models (without SmolLM2's default system message).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplate:
    """A Hugging Face chat template rendered in a sandbox, as `transformers` does (trim_blocks, lstrip_blocks)."""

    def __init__(self, source: str, *, bos_token: str | None = None, eos_token: str | None = None) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source
        self._template = env.from_string(source)
        self._bos_token = bos_token or ""
        self._eos_token = eos_token or ""

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt text for `messages`; `add_generation_prompt` opens the assistant's turn."""
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                tools=list(tools) if tools else None,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                **extra,
            )
        except jinja2.TemplateError as exc:
            raise ValueError(f"chat template failed: {exc}") from exc


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def flatten_content(content: Any) -> str:
    """A message's content as text: OpenAI content parts keep their text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


@functools.cache
def _chatml_template() -> ChatTemplate:
    return ChatTemplate(CHATML_TEMPLATE)


def chatml(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """ChatML through the one renderer."""
    return _chatml_template().render(messages, add_generation_prompt=add_generation_prompt)
