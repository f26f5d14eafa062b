"""Prompt logprobs: every position's log-probability of the next prompt token, from a full-logits forward pass.

Generation runs the graph rewritten to compute the vocabulary projection at each row's last position only
(artifact.add_last_token_gather): prefill then costs one row of lm_head per prompt. Scoring needs every row, so it
runs the graph as built, in a second onnxruntime session over the same model file, created on the first scoring
request (the weights are loaded once more: ~150 MB for SmolLM2-135M int8). A prompt is run in chunks of `chunk`
tokens over a host KV buffer as long as the prompt (the chunked-prefill scheme of runner.py), so the logits held at
once are `chunk x vocab` floats, whatever the prompt's length.

Logprobs are log-softmax of the raw logits in float64 (no temperature or penalties: the model's own distribution, as
sampling.py reports for generated tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from .artifact import ModelArtifact
from .runner import _FLOAT_TYPES, _INT_TYPES, _WorkBuffers


@dataclass
class ScoredToken:
    """One prompt position: its token, that token's logprob given everything before it, whether it was the most
    likely token there, and the `top` most likely tokens (id, logprob), most likely first."""

    token_id: int
    logprob: float
    greedy: bool
    top: list[tuple[int, float]] = field(default_factory=list)


class PromptScorer:
    """Scores token sequences with the full-logits graph. Not thread-safe: the engine runs it between its steps."""

    def __init__(self, artifact: ModelArtifact, *, vocab_size: int, chunk: int = 512) -> None:
        self.artifact = artifact
        self.graph = artifact.graph
        self.vocab_size = vocab_size
        self.chunk = chunk
        self._session: ort.InferenceSession | None = None

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            if not self.graph.last_token_logits:
                self._session = self.artifact.session
            else:
                options = self.artifact.session.get_session_options()
                providers = self.artifact.session.get_providers()
                self._session = ort.InferenceSession(str(self.artifact.path / "model.onnx"), options,
                                                     providers=providers)
        return self._session

    def score(self, tokens: Sequence[int], top: int = 0) -> list[ScoredToken]:
        """Positions 1..len(tokens)-1 (the first token has no context to be scored against)."""
        session = self.session
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        ids_dtype = _INT_TYPES[inputs["input_ids"].type]
        mask_dtype = _INT_TYPES[inputs["attention_mask"].type]
        logits_dtype = _FLOAT_TYPES[outputs["logits"].type]
        total = len(tokens)
        work = _WorkBuffers(self.graph, total)
        io = session.io_binding()
        work.bind(io, 1, total)
        target = np.asarray(tokens, dtype=np.int64)
        out: list[ScoredToken] = []
        for start in range(0, total - 1, self.chunk):
            piece = tokens[start : start + self.chunk]
            n = len(piece)
            io.bind_cpu_input("input_ids", np.asarray(piece, dtype=ids_dtype)[None, :])
            io.bind_cpu_input("attention_mask", np.ones((1, start + n), dtype=mask_dtype))
            logits = np.empty((1, n, self.graph.vocab_size), dtype=logits_dtype)
            io.bind_output("logits", "cpu", 0, logits_dtype, logits.shape, logits.ctypes.data)
            session.run_with_iobinding(io)
            nexts = target[start + 1 : start + n + 1]  # position j predicts token j + 1
            rows = logits[0, : len(nexts), : self.vocab_size].astype(np.float64)
            out.extend(_score_rows(rows, nexts, top))
        return out


def _score_rows(rows: np.ndarray, nexts: np.ndarray, top: int) -> list[ScoredToken]:
    peak = rows.max(axis=1, keepdims=True)
    lse = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
    chosen = rows[np.arange(len(nexts)), nexts] - lse
    greedy = rows.argmax(axis=1) == nexts
    alternatives: list[list[tuple[int, float]]] = [[] for _ in range(len(nexts))]
    if top > 0:
        k = min(top, rows.shape[1])
        part = np.argpartition(-rows, k - 1, axis=1)[:, :k]
        for i in range(len(nexts)):
            ids = part[i]
            values = rows[i, ids]
            order = np.lexsort((ids, -values))  # most likely first, ties to the lower id
            alternatives[i] = [(int(ids[j]), float(values[j] - lse[i])) for j in order]
    return [
        ScoredToken(int(t), float(lp), bool(g), alt)
        for t, lp, g, alt in zip(nexts.tolist(), chosen.tolist(), greedy.tolist(), alternatives, strict=True)
    ]
