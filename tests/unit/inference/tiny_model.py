"""A tiny random-weight decoder with the onnxruntime-genai builder's graph signature, built at test time.

Same inputs and outputs as the served SmolLM2 graph (`input_ids`, `attention_mask`, `past_key_values.{i}.key/value`
-> `logits`, `present.{i}.key/value`), the same attention-mask subgraph (seqlens_k = sum(mask) - 1, total length =
mask width), com.microsoft GroupQueryAttention with packed QKV and rotary embeddings (shared-buffer capable), int8
MatMulNBits projections with accuracy level 4, SimplifiedLayerNormalization and SiLU MLPs; plus a byte-level BPE
tokenizer trained on a few sentences with ChatML special tokens, a ChatML chat template and genai_config.json.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_SIZE = 16
INTERMEDIATE = 128
LAYERS = 2
CONTEXT = 256
BLOCK = 32
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "A tiny model writes tiny words: hello world, hello again, goodbye world.",
    "Numbers like 12345 and 67890 appear in text; so do symbols such as #, $ and %.",
    "Café, naïve, jalapeño, 東京, and emoji like 😀 make the bytes interesting.",
    "The engine batches requests, streams tokens and stops on stop sequences.",
]


def build_tokenizer(vocab_size: int = 320) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok


def _matmul_nbits(
    name: str, inp: str, out: str, k: int, n: int, rng: np.random.Generator, inits: list, gain: float = 1.0
) -> onnx.NodeProto:
    """An 8-bit MatMulNBits with random weights (symmetric: zero point 128), scaled so activations stay O(1)."""
    blocks = k // BLOCK
    weights = rng.integers(0, 256, size=(n, blocks, BLOCK), dtype=np.uint8)
    scales = np.full((n * blocks,), gain / (74.0 * np.sqrt(k)), dtype=np.float32)
    scales *= rng.uniform(0.5, 1.5, size=scales.shape).astype(np.float32)
    inits.append(numpy_helper.from_array(weights, f"{name}.weight_Q8"))
    inits.append(numpy_helper.from_array(scales, f"{name}.weight_scales"))
    return helper.make_node(
        "MatMulNBits",
        [inp, f"{name}.weight_Q8", f"{name}.weight_scales"],
        [out],
        name=name,
        domain="com.microsoft",
        K=k,
        N=n,
        bits=8,
        block_size=BLOCK,
        accuracy_level=4,
    )


def _rms(name: str, inp: str, out: str, inits: list) -> onnx.NodeProto:
    inits.append(numpy_helper.from_array(np.ones(HIDDEN, np.float32), f"{name}.weight"))
    return helper.make_node(
        "SimplifiedLayerNormalization", [inp, f"{name}.weight"], [out], name=name, axis=-1, epsilon=1e-5, stash_type=1
    )


def build_graph(vocab: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits: list = []
    nodes: list = []
    c = "/model/constants/"
    inits.append(numpy_helper.from_array(np.array([1], np.int64), c + "axes1"))
    inits.append(numpy_helper.from_array(np.array(1, np.int64), c + "one"))
    nodes += [
        helper.make_node("ReduceSum", ["attention_mask", c + "axes1"], ["mask_sum"], keepdims=0),
        helper.make_node("Sub", ["mask_sum", c + "one"], ["seqlens_k64"]),
        helper.make_node("Cast", ["seqlens_k64"], ["seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", c + "one"], ["total64"], axis=0),
        helper.make_node("Cast", ["total64"], ["total_seq_len"], to=TensorProto.INT32),
    ]
    embed = (rng.standard_normal((vocab, HIDDEN)) * 0.5).astype(np.float32)
    inits.append(numpy_helper.from_array(embed, "model.embed_tokens.weight"))
    nodes.append(helper.make_node("Gather", ["model.embed_tokens.weight", "input_ids"], ["h0"]))

    inv_freq = 1.0 / (10000.0 ** (np.arange(0, HEAD_SIZE, 2, dtype=np.float64) / HEAD_SIZE))
    angles = np.outer(np.arange(CONTEXT, dtype=np.float64), inv_freq)
    inits.append(numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos_cache"))
    inits.append(numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin_cache"))

    x = "h0"
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", vocab])]
    kv_shape = ["batch_size", KV_HEADS, "past_sequence_length", "kv_cache_dim"]
    present_shape = ["batch_size", KV_HEADS, "total_sequence_length", "kv_cache_dim"]
    for i in range(LAYERS):
        p = f"/model/layers.{i}"
        nodes.append(_rms(f"{p}/input_layernorm", x, f"{p}/ln1", inits))
        qkv = (HEADS + 2 * KV_HEADS) * HEAD_SIZE
        nodes.append(_matmul_nbits(f"{p}/attn/qkv_proj", f"{p}/ln1", f"{p}/qkv", HIDDEN, qkv, rng, inits))
        nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [
                    f"{p}/qkv",
                    "",
                    "",
                    f"past_key_values.{i}.key",
                    f"past_key_values.{i}.value",
                    "seqlens_k",
                    "total_seq_len",
                    "cos_cache",
                    "sin_cache",
                ],
                [f"{p}/attn_out", f"present.{i}.key", f"present.{i}.value"],
                name=f"{p}/attn/GroupQueryAttention",
                domain="com.microsoft",
                num_heads=HEADS,
                kv_num_heads=KV_HEADS,
                scale=1.0 / np.sqrt(HEAD_SIZE),
                local_window_size=-1,
                do_rotary=1,
                rotary_interleaved=0,
            )
        )
        nodes.append(
            _matmul_nbits(f"{p}/attn/o_proj", f"{p}/attn_out", f"{p}/o", HEADS * HEAD_SIZE, HIDDEN, rng, inits)
        )
        nodes.append(helper.make_node("Add", [x, f"{p}/o"], [f"{p}/res1"]))
        nodes.append(_rms(f"{p}/post_attention_layernorm", f"{p}/res1", f"{p}/ln2", inits))
        nodes.append(_matmul_nbits(f"{p}/mlp/gate_proj", f"{p}/ln2", f"{p}/gate", HIDDEN, INTERMEDIATE, rng, inits))
        nodes.append(_matmul_nbits(f"{p}/mlp/up_proj", f"{p}/ln2", f"{p}/up", HIDDEN, INTERMEDIATE, rng, inits))
        nodes.append(helper.make_node("Sigmoid", [f"{p}/gate"], [f"{p}/gate_sig"]))
        nodes.append(helper.make_node("Mul", [f"{p}/gate", f"{p}/gate_sig"], [f"{p}/silu"]))
        nodes.append(helper.make_node("Mul", [f"{p}/silu", f"{p}/up"], [f"{p}/act"]))
        nodes.append(_matmul_nbits(f"{p}/mlp/down_proj", f"{p}/act", f"{p}/down", INTERMEDIATE, HIDDEN, rng, inits))
        nodes.append(helper.make_node("Add", [f"{p}/res1", f"{p}/down"], [f"{p}/out"]))
        x = f"{p}/out"
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present_shape))
    nodes.append(_rms("/model/norm", x, "final_norm", inits))
    # A sharper head than the body: greedy choices should not hinge on rounding.
    nodes.append(_matmul_nbits("lm_head", "final_norm", "logits", HIDDEN, vocab, rng, inits, gain=4.0))
    graph = helper.make_graph(nodes, "tiny_decoder", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    return model


def build_tiny_model(directory: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write model.onnx, genai_config.json, tokenizer.json, tokenizer_config.json and chat_template.jinja."""
    root = pathlib.Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    tok.save(str(root / "tokenizer.json"))
    onnx.save(build_graph(vocab, seed), str(root / "model.onnx"))
    (root / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|im_end|>",
                "unk_token": "<|endoftext|>",
                "model_max_length": CONTEXT,
            }
        )
    )
    (root / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (root / "genai_config.json").write_text(
        json.dumps(
            {
                "model": {
                    "bos_token_id": 1,
                    "eos_token_id": 2,
                    "pad_token_id": 2,
                    "context_length": CONTEXT,
                    "type": "llama",
                    "vocab_size": vocab,
                    "decoder": {
                        "filename": "model.onnx",
                        "head_size": HEAD_SIZE,
                        "hidden_size": HIDDEN,
                        "num_attention_heads": HEADS,
                        "num_hidden_layers": LAYERS,
                        "num_key_value_heads": KV_HEADS,
                        "inputs": {
                            "input_ids": "input_ids",
                            "attention_mask": "attention_mask",
                            "past_key_names": "past_key_values.%d.key",
                            "past_value_names": "past_key_values.%d.value",
                        },
                        "outputs": {
                            "logits": "logits",
                            "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value",
                        },
                    },
                },
                "search": {"max_length": CONTEXT, "past_present_share_buffer": True},
            },
            indent=1,
        )
    )
    return root
