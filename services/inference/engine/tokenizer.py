"""The model's tokenizer: encode/decode with `tokenizers`, streaming detokenization, its chat template."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tokenizers import Tokenizer

from .chat_template import ChatTemplate

# How many tokens before the read position the incremental detokenizer decodes again, so that decoders which look
# at neighbours (leading-space stripping, byte fallback, multi-token characters) see the same context as a full decode.
_DETOKENIZE_CONTEXT = 5


def _byte_level_decoder_table() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: the printable character a byte-level BPE uses for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class ModelTokenizer:
    """Encoding, decoding, per-token bytes for logprobs and the chat template of one model."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        config: Mapping[str, Any] | None = None,
        chat_template: str | None = None,
        tokenizer_json: Mapping[str, Any] | None = None,
    ) -> None:
        self._tok = tokenizer
        config = dict(config or {})
        self.bos_token = _token_content(config.get("bos_token"))
        self.eos_token = _token_content(config.get("eos_token"))
        self.pad_token = _token_content(config.get("pad_token"))
        spec = dict(tokenizer_json or json.loads(tokenizer.to_str()))
        self._byte_level = _uses_byte_level(spec.get("decoder"))
        self._byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
        self._byte_table = _byte_level_decoder_table() if self._byte_level else {}
        self.special_ids: frozenset[int] = frozenset(
            int(t["id"]) for t in spec.get("added_tokens", []) if t.get("special")
        )
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        template = chat_template if chat_template is not None else config.get("chat_template")
        self.chat_template = (
            ChatTemplate(template, bos_token=self.bos_token, eos_token=self.eos_token)
            if isinstance(template, str)
            else None
        )
        self._bytes_cache: dict[int, bytes] = {}
        self._text_cache: dict[int, str] = {}

    @classmethod
    def from_dir(cls, path: str | pathlib.Path) -> ModelTokenizer:
        """Load `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` (the last two optional)."""
        path = pathlib.Path(path)
        raw = (path / "tokenizer.json").read_text(encoding="utf-8")
        config_path = path / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        template_path = path / "chat_template.jinja"
        template = template_path.read_text(encoding="utf-8") if template_path.exists() else None
        return cls(Tokenizer.from_str(raw), config=config, chat_template=template, tokenizer_json=json.loads(raw))

    # -- encoding and decoding ---------------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in the text (`<|im_start|>`) are recognised."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def to_json(self) -> str:
        """The tokenizer as tokenizer.json text (for libraries that build their own view of it: constraint.py)."""
        return self._tok.to_str()

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt text of a conversation through the model's chat template."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template")
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools, **extra)

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> list[int]:
        """Token ids of a conversation; the template writes every special token itself."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt, tools=tools, **extra)
        return self.encode(text, add_special_tokens=False)

    # -- per-token views, for logprobs -------------------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for (a byte-level token may be part of a UTF-8 character)."""
        cached = self._bytes_cache.get(token_id)
        if cached is not None:
            return cached
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            data = b""
        elif token_id in self.special_ids:
            data = piece.encode("utf-8")
        elif self._byte_level and all(ch in self._byte_table for ch in piece):
            data = bytes(self._byte_table[ch] for ch in piece)
        elif self._byte_fallback and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            data = bytes([int(piece[3:5], 16)])
        else:
            data = piece.replace("\u2581", " ").encode("utf-8")
        self._bytes_cache[token_id] = data
        return data

    def token_text(self, token_id: int) -> str:
        """The token as text; a token that is not valid UTF-8 on its own reads `bytes:\\xe2\\x80` like OpenAI's."""
        cached = self._text_cache.get(token_id)
        if cached is not None:
            return cached
        data = self.token_bytes(token_id)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = "bytes:" + "".join(f"\\x{b:02x}" for b in data)
        self._text_cache[token_id] = text
        return text

    def detokenizer(self, prompt_ids: Sequence[int] = ()) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt_ids)


def _token_content(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("content")
    return value if isinstance(value, str) else None


def _uses_byte_level(decoder: Any) -> bool:
    if not isinstance(decoder, Mapping):
        return False
    if decoder.get("type") == "ByteLevel":
        return True
    return any(_uses_byte_level(d) for d in decoder.get("decoders") or [])


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never split a UTF-8 character.

    It decodes a small window again on every token (the way vLLM and TGI do) and only releases text once the window
    no longer ends in U+FFFD, the mark a byte-level decoder leaves for an incomplete character. The deltas
    concatenate to exactly the text of a full decode of the generated ids.
    """

    def __init__(self, tokenizer: ModelTokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        context = list(prompt_ids[-_DETOKENIZE_CONTEXT:])
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._prefix_text = ""
        self._prefix_stale = True

    def push(self, token_ids: Iterable[int]) -> str:
        """Add generated tokens; return the text that is now certain."""
        self._ids.extend(token_ids)
        if self._prefix_stale:
            self._prefix_text = self._tok.decode(self._ids[self._prefix_offset : self._read_offset])
            self._prefix_stale = False
        text = self._tok.decode(self._ids[self._prefix_offset :])
        if len(text) > len(self._prefix_text) and not text.endswith("\ufffd"):
            delta = text[len(self._prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            self._prefix_stale = True
            return delta
        return ""

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end decodes as U+FFFD)."""
        if self._prefix_stale:
            self._prefix_text = self._tok.decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._tok.decode(self._ids[self._prefix_offset :])
        delta = text[len(self._prefix_text) :] if len(text) > len(self._prefix_text) else ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_stale = True
        return delta


class StopMatcher:
    """Text-level stop sequences: holds back text while it could still be the start of a stop sequence."""

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = [s for s in dict.fromkeys(stops) if s]
        self._pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add new text; return (text safe to emit, whether a stop sequence matched). The stop text is dropped."""
        if not self._stops:
            return delta, False
        self._pending += delta
        pending = self._pending
        first = -1
        for stop in self._stops:
            i = pending.find(stop)
            if i >= 0 and (first < 0 or i < first):
                first = i
        if first >= 0:
            self._pending = ""
            return pending[:first], True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(pending)), hold, -1):
                if pending.endswith(stop[:k]):
                    hold = k
                    break
        cut = len(pending) - hold
        self._pending = pending[cut:]
        return pending[:cut], False

    def flush(self) -> str:
        """What is held back, released when generation ends for another reason."""
        rest, self._pending = self._pending, ""
        return rest
