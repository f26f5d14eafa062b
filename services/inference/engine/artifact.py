"""A served model directory: the ONNX session, the facts the engine needs about its graph, tokenizer and EOS ids.

The layout is the onnxruntime-genai builder's: `model.onnx` (+ `model.onnx.data`), `genai_config.json`,
`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`. The graph takes `input_ids`, `attention_mask`
(right padded; GroupQueryAttention derives each row's length and positions from it) and
`past_key_values.{i}.key/value`, and returns `logits` and `present.{i}.key/value`.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from .tokenizer import ModelTokenizer

log = logging.getLogger(__name__)

_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bfloat16)": None}
# Tokens that end a turn or a document in the tokenizers this engine serves (ChatML and the GPT-2 family).
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_LAST_TOKEN_PREFIX = "llmlab_last_token/"


@dataclass(frozen=True)
class GraphInfo:
    """What the engine needs to know about a decoder graph with a KV cache."""

    num_layers: int
    num_kv_heads: int
    head_size: int
    vocab_size: int
    context_length: int
    kv_dtype: Any
    past_key_names: tuple[str, ...]
    past_value_names: tuple[str, ...]
    present_key_names: tuple[str, ...]
    present_value_names: tuple[str, ...]
    # True when the graph was rewritten to return only each row's last valid position: logits are [batch, 1, vocab].
    last_token_logits: bool = False

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_size * np.dtype(self.kv_dtype).itemsize


@dataclass
class ModelArtifact:
    """A loaded model: session, graph facts, tokenizer, end-of-sequence ids and where it runs."""

    path: pathlib.Path
    session: ort.InferenceSession
    graph: GraphInfo
    tokenizer: ModelTokenizer
    eos_token_ids: frozenset[int]
    device: str
    providers: list[str]
    genai_config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def load_artifact(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    threads: int | None = None,
    last_token_logits: bool = True,
    optimization_level: str = "all",
    session_config: Mapping[str, str] | None = None,
) -> ModelArtifact:
    """Load a model directory.

    `device="cuda"` uses the CUDA execution provider when onnxruntime-gpu provides it and falls back to the CPU with
    a log line otherwise. `threads` is the intra-op thread count (default: all cores; onnxruntime's own default for
    a session created from Python is one). `last_token_logits` rewrites the graph in memory so that it computes the
    vocabulary projection only at each row's last valid position (prefill then costs one row of lm_head per prompt
    instead of one per prompt token); the engine works with either graph.
    """
    root = pathlib.Path(path)
    model_file = root / "model.onnx"
    if not model_file.exists():
        raise FileNotFoundError(f"no model.onnx in {root}")
    genai_path = root / "genai_config.json"
    genai = json.loads(genai_path.read_text(encoding="utf-8")) if genai_path.exists() else {}
    tokenizer = ModelTokenizer.from_dir(root)

    providers = _providers(device)
    options = _session_options(threads, optimization_level, session_config)
    rewritten = _rewrite_for_last_token(model_file) if last_token_logits else None
    if rewritten is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(root))
        session = ort.InferenceSession(rewritten, options, providers=providers)
    else:
        session = ort.InferenceSession(str(model_file), options, providers=providers)
    used = session.get_providers()
    effective = "cuda" if "CUDAExecutionProvider" in used else "cpu"
    if device == "cuda" and effective != "cuda":
        log.warning("CUDA execution provider did not load (providers in use: %s); running on the CPU", used)

    graph = _graph_info(session, genai, tokenizer, last_token_logits=rewritten is not None)
    eos = _eos_ids(genai, tokenizer)
    log.info(
        "loaded model %s: %d layers, %d kv heads x %d, vocab %d, context %d, eos %s, providers %s, threads %s%s",
        root.name,
        graph.num_layers,
        graph.num_kv_heads,
        graph.head_size,
        graph.vocab_size,
        graph.context_length,
        sorted(eos),
        used,
        threads,
        ", last-token logits" if graph.last_token_logits else "",
    )
    return ModelArtifact(root, session, graph, tokenizer, eos, effective, used, genai)


def _providers(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise ValueError(f"unknown device {device!r} (expected 'cpu' or 'cuda')")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        log.warning(
            "device 'cuda' requested but this onnxruntime build has no CUDAExecutionProvider "
            "(install onnxruntime-gpu); running on the CPU"
        )
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _session_options(
    threads: int | None, optimization_level: str, session_config: Mapping[str, str] | None
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options.graph_optimization_level = levels[optimization_level]
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    return options


def _rewrite_for_last_token(model_file: pathlib.Path) -> bytes | None:
    try:
        import onnx
    except ImportError:
        log.info("onnx is not installed; serving the graph as built (logits for every prompt position)")
        return None
    model = onnx.load(str(model_file), load_external_data=False)
    if not add_last_token_gather(model):
        log.info("graph of %s not rewritten for last-token logits; serving it as built", model_file)
        return None
    return model.SerializeToString()


def add_last_token_gather(model: Any) -> bool:
    """Rewrite a decoder graph in place so that `logits` covers only each row's last valid input position.

    Inserted before the vocabulary projection: index = clamp(sum(attention_mask) - 1 - (mask width - input width),
    0, input width - 1), which is each row's last prompt token when prefilling (mask width = input width, right
    padding) and 0 when decoding one token. The projection then runs on [batch, 1, hidden]. Returns False (graph
    untouched) when the graph does not look like the builder's.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inputs = {i.name for i in graph.input}
    if opset < 13 or not {"input_ids", "attention_mask"} <= inputs:
        return False
    if any(n.name.startswith(_LAST_TOKEN_PREFIX) for n in graph.node):
        return True
    producer = next((n for n in graph.node if "logits" in n.output), None)
    if producer is None or producer.op_type not in ("MatMul", "MatMulNBits", "Gemm") or not producer.input:
        return False
    hidden = producer.input[0]
    p = _LAST_TOKEN_PREFIX

    def const(name: str, values: list[int], dims: list[int]) -> Any:
        return helper.make_node(
            "Constant",
            [],
            [p + name],
            name=p + name,
            value=helper.make_tensor(p + name, TensorProto.INT64, dims, values),
        )

    nodes = [
        const("axis1", [1], [1]),
        const("zero", [0], []),
        const("one", [1], []),
        helper.make_node("ReduceSum", ["attention_mask", p + "axis1"], [p + "valid"], name=p + "valid", keepdims=0),
        helper.make_node("Shape", ["attention_mask"], [p + "mask_shape"], name=p + "mask_shape"),
        helper.make_node("Gather", [p + "mask_shape", p + "one"], [p + "total"], name=p + "total", axis=0),
        helper.make_node("Shape", ["input_ids"], [p + "ids_shape"], name=p + "ids_shape"),
        helper.make_node("Gather", [p + "ids_shape", p + "one"], [p + "new"], name=p + "new", axis=0),
        helper.make_node("Sub", [p + "total", p + "new"], [p + "past"], name=p + "past"),
        helper.make_node("Sub", [p + "valid", p + "past"], [p + "valid_new"], name=p + "valid_new"),
        helper.make_node("Sub", [p + "valid_new", p + "one"], [p + "last"], name=p + "last"),
        helper.make_node("Sub", [p + "new", p + "one"], [p + "max_index"], name=p + "max_index"),
        helper.make_node("Max", [p + "last", p + "zero"], [p + "at_least_0"], name=p + "at_least_0"),
        helper.make_node("Min", [p + "at_least_0", p + "max_index"], [p + "index"], name=p + "index"),
        helper.make_node("Unsqueeze", [p + "index", p + "axis1"], [p + "index_2d"], name=p + "index_2d"),
        helper.make_node("GatherND", [hidden, p + "index_2d"], [p + "rows"], name=p + "rows", batch_dims=1),
        helper.make_node("Unsqueeze", [p + "rows", p + "axis1"], [p + "hidden"], name=p + "hidden"),
    ]
    position = list(graph.node).index(producer)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    producer.input[0] = p + "hidden"
    for output in graph.output:
        if output.name == "logits" and len(output.type.tensor_type.shape.dim) == 3:
            dim = output.type.tensor_type.shape.dim[1]
            dim.ClearField("dim_param")
            dim.dim_value = 1
    return True


def _graph_info(
    session: ort.InferenceSession, genai: Mapping[str, Any], tokenizer: ModelTokenizer, *, last_token_logits: bool
) -> GraphInfo:
    decoder = (genai.get("model") or {}).get("decoder") or {}
    names = decoder.get("inputs") or {}
    out_names = decoder.get("outputs") or {}
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    for required in ("input_ids", "attention_mask"):
        if required not in inputs:
            raise ValueError(f"graph has no {required!r} input")
    if "logits" not in outputs:
        raise ValueError("graph has no 'logits' output")
    if "position_ids" in inputs:
        raise ValueError("graph takes position_ids: this engine serves GroupQueryAttention graphs (right padding)")

    def layer_names(pattern: str | None, fallback: str, pool: Mapping[str, Any]) -> tuple[str, ...]:
        pattern = pattern or fallback
        found = []
        while (pattern % len(found)) in pool:
            found.append(pattern % len(found))
        return tuple(found)

    past_k = layer_names(names.get("past_key_names"), "past_key_values.%d.key", inputs)
    past_v = layer_names(names.get("past_value_names"), "past_key_values.%d.value", inputs)
    pres_k = layer_names(out_names.get("present_key_names"), "present.%d.key", outputs)
    pres_v = layer_names(out_names.get("present_value_names"), "present.%d.value", outputs)
    if not past_k or not (len(past_k) == len(past_v) == len(pres_k) == len(pres_v)):
        raise ValueError("graph has no consistent past_key_values.*/present.* inputs and outputs")
    shape = inputs[past_k[0]].shape
    kv_dtype = _ORT_TO_NUMPY.get(inputs[past_k[0]].type)
    if kv_dtype is None:
        raise ValueError(f"unsupported KV cache type {inputs[past_k[0]].type}")
    kv_heads = shape[1] if isinstance(shape[1], int) else decoder.get("num_key_value_heads")
    head_size = shape[3] if isinstance(shape[3], int) else decoder.get("head_size")
    if head_size is None and decoder.get("hidden_size") and decoder.get("num_attention_heads"):
        head_size = decoder["hidden_size"] // decoder["num_attention_heads"]
    if not isinstance(kv_heads, int) or not isinstance(head_size, int):
        raise ValueError("cannot tell the KV heads and head size from the graph or genai_config.json")
    logits_shape = outputs["logits"].shape
    vocab = logits_shape[-1] if isinstance(logits_shape[-1], int) else (genai.get("model") or {}).get("vocab_size")
    if not isinstance(vocab, int):
        vocab = tokenizer.vocab_size
    model_cfg = genai.get("model") or {}
    context = model_cfg.get("context_length") or (genai.get("search") or {}).get("max_length")
    if not context:
        context = 2048
        log.warning("no context_length in genai_config.json; assuming %d", context)
    return GraphInfo(
        num_layers=len(past_k),
        num_kv_heads=int(kv_heads),
        head_size=int(head_size),
        vocab_size=int(vocab),
        context_length=int(context),
        kv_dtype=kv_dtype,
        past_key_names=past_k,
        past_value_names=past_v,
        present_key_names=pres_k,
        present_value_names=pres_v,
        last_token_logits=last_token_logits,
    )


def _eos_ids(genai: Mapping[str, Any], tokenizer: ModelTokenizer) -> frozenset[int]:
    ids: set[int] = set()
    configured = (genai.get("model") or {}).get("eos_token_id")
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(int(i) for i in configured)
    for token in (tokenizer.eos_token, *_END_TOKENS):
        token_id = tokenizer.token_to_id(token) if token else None
        if token_id is not None and (token == tokenizer.eos_token or token_id in tokenizer.special_ids):
            ids.add(token_id)
    return frozenset(ids)
