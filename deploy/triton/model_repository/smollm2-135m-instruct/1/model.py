"""Triton Python backend model: llmlab's imported ONNX artifact, streaming tokens to a decoupled client.

It speaks the vLLM-on-Triton interface (what services/inference/backends/triton.py sends): `text_input` plus
optional `stream`, `sampling_parameters` (JSON, vLLM names), `exclude_input_in_output` and the `return_*` flags;
each response carries the new text in `text_output`, and the last one is sent with the FINAL flag.

Self-contained on purpose (numpy, onnxruntime, tokenizers) but for llmlab.sampling, the one table of sampling
bounds, which imports only the standard library (deploy/triton/Dockerfile copies it into the image). Each request
decodes on its own thread with its own KV cache; continuous batching is the llmlab engine's job, not this file's.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmlab.sampling import BOUNDS, violation

try:  # only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported outside Triton (tests inject a stand-in before import)
    pb_utils = None


@dataclass
class Sampling:
    """vLLM SamplingParams names, the subset this model honours."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None

    @classmethod
    def from_json(cls, raw: str) -> Sampling:
        data = json.loads(raw) if raw else {}
        if not isinstance(data, dict):
            raise ValueError("sampling_parameters must be a JSON object")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and data[k] is not None}
        s = cls(**known)
        if isinstance(s.stop, str):
            s.stop = [s.stop]
        s.max_tokens, s.top_k = int(s.max_tokens), max(int(s.top_k), 0)  # vLLM's -1 = disabled
        s.temperature, s.top_p = float(s.temperature), float(s.top_p)
        for name in BOUNDS:
            if hasattr(s, name) and (constraint := violation(name, getattr(s, name))) is not None:
                raise ValueError(f"sampling_parameters out of range: {name} {constraint}")
        return s


@dataclass
class Step:
    """What one decode step produced: new text (possibly empty while a stop sequence may be forming)."""

    text: str
    tokens: int
    finish_reason: str | None = None


class OnnxLM:
    """The onnxruntime-genai builder's graph (GroupQueryAttention, KV cache in/out, no position_ids)."""

    def __init__(self, artifact_dir: str, *, threads: int = 2, provider: str = "cpu") -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        with open(os.path.join(artifact_dir, "genai_config.json")) as f:
            genai = json.load(f)["model"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads  # onnxruntime's default here is one thread
        so.inter_op_num_threads = 1
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
        )
        self.session = ort.InferenceSession(os.path.join(artifact_dir, "model.onnx"), so, providers=providers)
        self.tokenizer = Tokenizer.from_file(os.path.join(artifact_dir, "tokenizer.json"))
        self.context = int(genai.get("context_length", 2048))
        eos = genai.get("eos_token_id", [])
        self.eos = set(eos if isinstance(eos, list) else [eos])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        shape = inputs[self.past_names[0]].shape
        self.kv_heads = int(shape[1])
        self.head = int(genai["decoder"].get("head_size", 64))
        self.dtype = np.float16 if "float16" in inputs[self.past_names[0]].type else np.float32

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _forward(self, ids: list[int], past: list[np.ndarray], total: int) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
        }
        feed.update(zip(self.past_names, past, strict=True))
        out = self.session.run(["logits", *self.present_names], feed)
        return out[0][0, -1], out[1:]

    def generate(
        self, prompt_ids: list[int], s: Sampling, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[Step]:
        """Yield a Step per generated token; the last one has finish_reason."""
        if not prompt_ids:
            raise ValueError("text_input is empty")
        if len(prompt_ids) >= self.context:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context window is {self.context}")
        budget = min(s.max_tokens, self.context - len(prompt_ids))
        rng = np.random.default_rng(s.seed)
        stops = set(s.stop_token_ids) | (set() if s.ignore_eos else self.eos)
        past = [np.zeros((1, self.kv_heads, 0, self.head), self.dtype) for _ in self.past_names]
        logits, past = self._forward(prompt_ids, past, len(prompt_ids))
        out: list[int] = []
        counts: dict[int, int] = {}
        sent = ""  # text already handed out
        while True:
            if cancelled():
                yield Step("", 0, "cancelled")
                return
            token = sample(logits, s, rng, counts, prompt_ids)
            if token in stops:
                yield Step(self.tokenizer.decode(out, skip_special_tokens=True)[len(sent) :], 0, "stop")
                return
            out.append(token)
            counts[token] = counts.get(token, 0) + 1
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            hit = _find_stop(text, s.stop)
            if hit is not None:
                yield Step(text[len(sent) : hit], 1, "stop")
                return
            if len(out) >= budget:
                yield Step(text[len(sent) :], 1, "length")
                return
            safe = len(text) - _held_back(text, s.stop)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                safe = min(safe, len(text) - 1)
            delta = text[len(sent) : safe] if safe > len(sent) else ""
            sent += delta
            yield Step(delta, 1)
            logits, past = self._forward([token], past, len(prompt_ids) + len(out))


def _layer_order(name: str) -> tuple[int, int]:
    parts = name.split(".")
    return int(parts[1]), 0 if parts[2] == "key" else 1


def _find_stop(text: str, stop: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stop: list[str]) -> int:
    """Characters at the end of `text` that could be the start of a stop sequence."""
    longest = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def sample(logits: np.ndarray, s: Sampling, rng: np.random.Generator, counts: dict[int, int], prompt: list[int]) -> int:
    """One token: penalties (HF repetition over prompt+output; OpenAI frequency/presence over output), then greedy
    at temperature 0, else temperature, top-k, top-p and a draw from `rng`."""
    x = logits.astype(np.float64, copy=True)
    if s.repetition_penalty != 1.0:
        seen = np.fromiter(set(prompt) | set(counts), dtype=np.int64)
        vals = x[seen]
        x[seen] = np.where(vals > 0, vals / s.repetition_penalty, vals * s.repetition_penalty)
    if counts and (s.frequency_penalty or s.presence_penalty):
        ids = np.fromiter(counts, dtype=np.int64)
        n = np.fromiter(counts.values(), dtype=np.float64)
        x[ids] -= s.frequency_penalty * n + s.presence_penalty
    if s.temperature == 0:
        return int(np.argmax(x))
    x /= s.temperature
    if 0 < s.top_k < x.size:
        cut = np.partition(x, -s.top_k)[-s.top_k]
        x[x < cut] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    if s.top_p < 1.0:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), s.top_p)) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))


def _scalar(request: Any, name: str, default: Any) -> Any:
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return default
    v = t.as_numpy().reshape(-1)[0]
    return v.decode("utf-8") if isinstance(v, bytes) else v


class TritonPythonModel:
    """Triton's entry points. Decoupled: `execute` hands each request to a worker and returns at once."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("this model streams: set model_transaction_policy { decoupled: true }")
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        artifact = os.environ.get("LLMLAB_ARTIFACT_DIR") or params["artifact_dir"]
        self.lm = OnnxLM(
            artifact,
            threads=int(params.get("intra_op_num_threads", "2")),
            provider=params.get("execution_provider", "cpu"),
        )
        self.pool = ThreadPoolExecutor(
            max_workers=int(params.get("max_concurrent_requests", "4")), thread_name_prefix="llmlab-gen"
        )
        self._inflight = 0
        self._lock = threading.Lock()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            with self._lock:
                self._inflight += 1
            self.pool.submit(self._serve, request)
        return None

    def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            text = _scalar(request, "text_input", "")
            stream = bool(_scalar(request, "stream", False))
            sampling = Sampling.from_json(_scalar(request, "sampling_parameters", "") or "{}")
            exclude_input = bool(_scalar(request, "exclude_input_in_output", False))
            want_reason = bool(_scalar(request, "return_finish_reason", False))
            want_in = bool(_scalar(request, "return_num_input_tokens", False))
            want_out = bool(_scalar(request, "return_num_output_tokens", False))
            prompt_ids = self.lm.encode(text)
            cancelled = getattr(request, "is_cancelled", None) or getattr(sender, "is_cancelled", lambda: False)

            def response(piece: str, tokens: int, reason: str | None) -> Any:
                outs = [pb_utils.Tensor("text_output", np.array([piece.encode("utf-8")], dtype=np.object_))]
                if want_reason and reason is not None:
                    outs.append(pb_utils.Tensor("finish_reason", np.array([reason.encode()], dtype=np.object_)))
                if want_in:
                    outs.append(pb_utils.Tensor("num_input_tokens", np.array([len(prompt_ids)], dtype=np.uint32)))
                if want_out:
                    outs.append(pb_utils.Tensor("num_output_tokens", np.array([tokens], dtype=np.uint32)))
                return pb_utils.InferenceResponse(output_tensors=outs)

            pending, pending_tokens = ("" if exclude_input else text), 0
            for step in self.lm.generate(prompt_ids, sampling, cancelled):
                pending += step.text
                pending_tokens += step.tokens
                if step.finish_reason is not None:
                    sender.send(response(pending, pending_tokens, step.finish_reason), flags=final)
                    return
                if stream and pending:
                    sender.send(response(pending, pending_tokens, None))
                    pending, pending_tokens = "", 0
        except Exception as e:  # reported to the client as the stream's error
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))), flags=final)
        finally:
            with self._lock:
                self._inflight -= 1

    def finalize(self) -> None:
        deadline = time.monotonic() + 30
        while self._inflight and time.monotonic() < deadline:
            time.sleep(0.1)
        self.pool.shutdown(wait=False, cancel_futures=True)
