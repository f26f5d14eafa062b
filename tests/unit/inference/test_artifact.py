"""Loading a model directory: graph facts, EOS ids, the last-token rewrite, the device fallback, the KV backends."""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import onnxruntime as ort
import pytest

from services.inference.engine import KVCache, ModelArtifact, load_artifact
from services.inference.engine.runner import ModelRunner

from . import tiny_model


def test_graph_facts(tiny_artifact: ModelArtifact) -> None:
    g = tiny_artifact.graph
    assert (g.num_layers, g.num_kv_heads, g.head_size) == (tiny_model.LAYERS, tiny_model.KV_HEADS, tiny_model.HEAD_SIZE)
    assert g.context_length == tiny_model.CONTEXT
    assert g.vocab_size == tiny_artifact.tokenizer.vocab_size
    assert g.past_key_names[1] == "past_key_values.1.key" and g.present_value_names[0] == "present.0.value"
    assert g.last_token_logits
    # genai's eos_token_id, the tokenizer's eos (<|im_end|>) and <|endoftext|>
    assert tiny_artifact.eos_token_ids == frozenset({0, 2})
    assert tiny_artifact.device == "cpu"


def _run(session: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    feed = {"input_ids": ids, "attention_mask": mask}
    for i in range(tiny_model.LAYERS):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = np.zeros((ids.shape[0], tiny_model.KV_HEADS, 0, 16), np.float32)
    return session.run(["logits"], feed)[0]


def test_last_token_rewrite_returns_each_rows_last_logits(tiny_model_dir: pathlib.Path) -> None:
    plain = load_artifact(tiny_model_dir, threads=1, last_token_logits=False)
    rewritten = load_artifact(tiny_model_dir, threads=1)
    assert not plain.graph.last_token_logits
    ids = np.random.default_rng(0).integers(3, 300, size=(3, 9)).astype(np.int64)
    mask = np.ones((3, 9), np.int64)
    mask[1, 4:] = 0
    mask[2, 7:] = 0
    full = _run(plain.session, ids, mask)
    last = _run(rewritten.session, ids, mask)
    assert full.shape == (3, 9, plain.graph.vocab_size) and last.shape == (3, 1, plain.graph.vocab_size)
    np.testing.assert_array_equal(last[:, 0], full[[0, 1, 2], [8, 3, 6]])


def test_cuda_falls_back_to_cpu_with_a_log_line(tiny_model_dir: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA execution provider")
    with caplog.at_level(logging.WARNING, logger="services.inference.engine.artifact"):
        artifact = load_artifact(tiny_model_dir, device="cuda", threads=1)
    assert artifact.device == "cpu" and artifact.providers == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider" in caplog.text and "CPU" in caplog.text


def test_missing_model_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.onnx"):
        load_artifact(tmp_path)


@pytest.mark.parametrize("backend", ["numpy", "ortvalue"])
def test_kv_slot_move(tiny_artifact: ModelArtifact, backend: str) -> None:
    kv = KVCache(tiny_artifact.graph, 3, 8, backend=backend)
    runner_io = tiny_artifact.session.io_binding()
    kv.bind(runner_io, 0, 3)  # binding a slice is accepted by onnxruntime
    if backend == "numpy":
        for a in kv.arrays:
            a[2] = np.arange(a[2].size, dtype=np.float32).reshape(a[2].shape)
            a[0] = -1
        kv.move(2, 0, 5)
        for a in kv.arrays:
            np.testing.assert_array_equal(a[0, :, :5], a[2, :, :5])
            assert (a[0, :, 5:] == -1).all()
    else:
        # device memory: whole slots are copied by an Identity graph bound to raw pointers (run here on the CPU)
        for value in kv._values:
            data = np.full((3, *kv.slot_shape), -1, np.float32)
            data[2] = np.arange(data[2].size, dtype=np.float32).reshape(data[2].shape)
            value.update_inplace(data)
        kv.move(2, 0, 5)
        for value in kv._values:
            data = value.numpy()
            np.testing.assert_array_equal(data[0], data[2])
            assert (data[1] == -1).all()


def test_runner_prefill_paths_agree(tiny_artifact: ModelArtifact) -> None:
    # Host backend: prefill in a work buffer and copy; device backend: prefill in the slots directly.
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19]]
    host = ModelRunner(tiny_artifact, max_batch=4, max_len=32, kv_backend="numpy")
    device = ModelRunner(tiny_artifact, max_batch=4, max_len=32, kv_backend="ortvalue")
    np.testing.assert_array_equal(host.prefill(1, prompts), device.prefill(1, prompts))
    lengths = np.array([0, 5, 3, 7])
    tokens = np.array([3, 4, 5, 6])
    host.prefill(0, [[20]])
    device.prefill(0, [[20]])
    lengths[0] = 1
    np.testing.assert_array_equal(host.decode(tokens, lengths), device.decode(tokens, lengths))
