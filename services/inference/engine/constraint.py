"""Constrained decoding: a grammar (domain.Grammar) enforced on one sequence, token by token, with llguidance.

llguidance (the Low-level Guidance library: a Rust Earley parser over a derivative-based lexer, maintained by the
guidance project and used by llama.cpp and vLLM) turns a JSON Schema or a Lark grammar into a matcher over our own
tokenizer (built from the model's tokenizer.json) and computes, for the matcher's state, the bitmask of the tokens
that keep the output inside the grammar. Per decode step and constrained sequence:

    mask   = constraint.mask()          # 1536 int32 words for a 49k vocabulary; ~10-400 us, see docs
    logits[~mask] = -inf                # numpy, ~15 us (apply_mask)
    token  = sample(logits)             # the request's own sampler: temperature, top_p, seed as usual
    constraint.advance(token)           # the matcher moves on; `done` once nothing but EOS can follow

EOS is in the mask only where the grammar accepts, so a sequence never ends inside a half-written JSON value; a
sequence whose grammar cannot grow any more (`done`) ends with "stop" without spending a step on EOS; one that runs
out of max_tokens first ends with "length", as any other. The batch computes the next step's masks in its helper
thread while the model runs the step (batch.py), so a mask usually costs the critical path nothing.

Compiling a grammar (schema -> grammar -> matcher with its lexer) is cached per grammar text in a bounded LRU: a
request with a known schema starts from a copy of the cached matcher (`deep_copy`, microseconds).
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import llguidance
import numpy as np

from ..domain import Grammar
from .errors import InvalidRequest

__all__ = ["GrammarCompiler", "GrammarError", "TokenConstraint", "apply_mask", "check_grammar", "grammar_source"]

_LOG_SILENT = 0


class GrammarError(InvalidRequest):
    """A grammar or schema the library cannot compile (invalid, or using unsupported features)."""


def grammar_source(grammar: Grammar) -> str:
    """The llguidance grammar definition of `grammar` (raises GrammarError for a malformed one)."""
    if grammar.kind == "json_schema":
        try:
            schema = json.loads(grammar.text)
        except ValueError as exc:
            raise GrammarError(f"the JSON schema is not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise GrammarError("a JSON schema must be a JSON object")
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema)
        except ValueError as exc:
            raise GrammarError(str(exc)) from None
    if grammar.kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(grammar.text)
    raise GrammarError(f"unknown grammar kind {grammar.kind!r}")


@lru_cache(maxsize=512)
def _check(kind: str, text: str) -> str | None:
    try:
        source = grammar_source(Grammar(kind, text))
    except GrammarError as exc:
        return str(exc)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(source)
    return (messages[0] if messages else "invalid grammar") if is_error else None


def check_grammar(grammar: Grammar) -> str | None:
    """Why `grammar` does not compile (llguidance's message, e.g. 'Unimplemented keys: ["not"]'), or None. Needs no
    tokenizer, so the API layer refuses a bad schema before a model is involved; cached per grammar."""
    return _check(grammar.kind, grammar.text)


def apply_mask(row: np.ndarray, mask: np.ndarray) -> None:
    """Set the logits of the tokens `mask` (packed bits, llguidance's layout: token t is bit t % 32 of word t // 32)
    leaves out to -inf, in place. Logits past the mask (a padded vocabulary) are left out too."""
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")
    n = min(row.shape[0], bits.shape[0])
    np.copyto(row[:n], np.float32(-np.inf), where=bits[:n] == 0)
    if row.shape[0] > n:
        row[n:] = -np.inf


class TokenConstraint:
    """One sequence's matcher and the mask of its next token."""

    __slots__ = ("_fresh", "_matcher", "_words")

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._words = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self._fresh = False

    def prepare(self) -> None:
        """Compute the next token's mask (the batch calls this while the model runs the step)."""
        if self._fresh:
            return
        m = self._matcher
        if m.is_error():
            raise GrammarError(f"constrained decoding failed: {m.get_error()}")
        m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        self._fresh = True

    def mask(self) -> np.ndarray:
        """The packed mask of the tokens allowed next (computed now if `prepare` has not run since the last token)."""
        self.prepare()
        return self._words

    def advance(self, token: int) -> None:
        """Take the sampled token; raises GrammarError if the grammar refuses it (it cannot, when it was masked)."""
        self._fresh = False
        if not self._matcher.consume_token(token):
            raise GrammarError(f"constrained decoding failed: {self._matcher.get_error()}")

    @property
    def done(self) -> bool:
        """Nothing can follow but EOS: the output is complete."""
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._matcher.is_accepting()


class GrammarCompiler:
    """Grammars compiled against one model's tokenizer, cached (LRU, `capacity` grammars). Thread-safe: the engine
    compiles off the event loop, in a worker thread, and takes matchers in its step thread."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: Iterable[int], capacity: int = 128) -> None:
        self._tokenizer_json = tokenizer_json
        self.vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._capacity = capacity
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._cache: collections.OrderedDict[tuple[str, str], llguidance.LLMatcher] = collections.OrderedDict()
        self._compiling: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of our tokenizer (its token trie; ~0.3 s to build, once per engine)."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.LLTokenizer(
                    self._tokenizer_json, n_vocab=self.vocab_size, eos_token=self._eos or None
                )
            return self._tokenizer

    def cached(self, grammar: Grammar) -> bool:
        with self._lock:
            return (grammar.kind, grammar.text) in self._cache

    def constraint(self, grammar: Grammar) -> TokenConstraint:
        """A fresh constraint for one sequence; compiles the grammar unless it is cached. Raises GrammarError."""
        key = (grammar.kind, grammar.text)
        template = self._lookup(key)
        if template is None:
            with self._lock:
                compiling = self._compiling.setdefault(key, threading.Lock())
            with compiling:  # requests arriving together with one new schema compile it once
                template = self._lookup(key)
                if template is None:
                    try:
                        template = self._compile(grammar)
                        with self._lock:
                            self.misses += 1
                            self._cache[key] = template
                            while len(self._cache) > self._capacity:
                                self._cache.popitem(last=False)
                    finally:
                        with self._lock:
                            self._compiling.pop(key, None)
        return TokenConstraint(template.deep_copy(), self.vocab_size)

    def _lookup(self, key: tuple[str, str]) -> llguidance.LLMatcher | None:
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
                self.hits += 1
            return template

    def _compile(self, grammar: Grammar) -> llguidance.LLMatcher:
        source = grammar_source(grammar)
        matcher = llguidance.LLMatcher(self.tokenizer, source, log_level=_LOG_SILENT)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return matcher

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"grammars": len(self._cache), "hits": self.hits, "misses": self.misses}
