"""deploy/triton's model repository against what the Triton client sends and reads, and model.py's sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.inference.backends import triton as triton_backend
from services.inference.domain import SamplingParams

from .triton_stub import MODEL_DIR, load_model_module, model_config_json

# model_config_pb2 data types as the KServe v2 wire protocol names them.
WIRE = {"TYPE_STRING": "BYTES", "TYPE_BOOL": "BOOL", "TYPE_UINT32": "UINT32", "TYPE_INT32": "INT32"}


@pytest.fixture(scope="module")
def config() -> model_config_pb2.ModelConfig:
    return text_format.Parse((MODEL_DIR / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_config_is_a_decoupled_python_model_named_like_its_directory(config):
    assert config.name == MODEL_DIR.name
    assert config.backend == "python"
    assert config.model_transaction_policy.decoupled is True
    assert config.max_batch_size == 0
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert (MODEL_DIR / "1" / "model.py").is_file()


def test_config_inputs_match_the_client(config):
    declared = {i.name: WIRE[model_config_pb2.DataType.Name(i.data_type)] for i in config.input}
    assert declared == triton_backend.INPUTS
    for i in config.input:
        assert list(i.dims) == [1]
        assert i.optional is (i.name not in triton_backend.REQUIRED_INPUTS)


def test_config_outputs_match_the_client(config):
    declared = {o.name: WIRE[model_config_pb2.DataType.Name(o.data_type)] for o in config.output}
    assert declared == triton_backend.OUTPUTS


def test_config_parameters_point_at_the_artifact(config):
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["artifact_dir"].endswith("/smollm2-135m-instruct")
    assert int(params["intra_op_num_threads"]) >= 1 and int(params["max_concurrent_requests"]) >= 1
    assert params["execution_provider"] in ("cpu", "cuda")


def test_client_sends_the_config_inputs_with_their_types():
    backend = triton_backend.TritonBackend.__new__(triton_backend.TritonBackend)
    inputs = backend._inputs("hello", SamplingParams(temperature=0, max_tokens=5, stop=["\n"], seed=3))
    assert {i.name(): i.datatype() for i in inputs} == triton_backend.INPUTS
    assert all(i.shape() == [1] for i in inputs)


def test_sampling_parameters_use_vllm_names_and_skip_defaults():
    p = SamplingParams(temperature=0.5, top_p=0.9, top_k=40, max_tokens=7, repetition_penalty=1.1, stop=["x"], seed=1)
    assert triton_backend.sampling_parameters(p) == {
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "stop": ["x"],
        "seed": 1,
    }
    assert triton_backend.sampling_parameters(SamplingParams()) == {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0}


def test_model_py_reads_the_json_config_triton_passes():
    cfg = json.loads(model_config_json())
    assert cfg["model_transaction_policy"]["decoupled"] is True
    assert cfg["parameters"]["artifact_dir"]["string_value"].endswith("smollm2-135m-instruct")


# ------------------------------------------------------------------------------------------- model.py logic


@pytest.fixture(scope="module")
def model_py():
    return load_model_module()


def test_sampling_json_parsing(model_py):
    s = model_py.Sampling.from_json(json.dumps({"max_tokens": 4, "top_k": -1, "stop": "END", "unknown": 1}))
    assert s.max_tokens == 4 and s.top_k == 0 and s.stop == ["END"]
    for bad in ({"max_tokens": 0}, {"top_p": 0}, {"temperature": -1}, [1, 2]):
        with pytest.raises(ValueError):
            model_py.Sampling.from_json(json.dumps(bad))


def test_sampler_greedy_penalties_and_seed(model_py):
    logits = np.array([1.0, 3.0, 2.0, 0.5], dtype=np.float32)
    rng = np.random.default_rng(0)
    greedy = model_py.Sampling(temperature=0)
    assert model_py.sample(logits, greedy, rng, {}, []) == 1
    # frequency penalty on an already generated token moves greedy to the runner-up
    assert model_py.sample(logits, model_py.Sampling(temperature=0, frequency_penalty=2.0), rng, {1: 1}, []) == 2
    # HF repetition penalty divides positive logits of seen tokens (prompt included)
    assert model_py.sample(logits, model_py.Sampling(temperature=0, repetition_penalty=4.0), rng, {}, [1]) == 2
    # top_k=1 is greedy even when sampling
    assert model_py.sample(logits, model_py.Sampling(top_k=1), rng, {}, []) == 1
    # same seed, same draws
    s = model_py.Sampling(temperature=1.0, seed=7)
    a = [model_py.sample(logits, s, r, {}, []) for r in [np.random.default_rng(7)] * 20]
    b = [model_py.sample(logits, s, r, {}, []) for r in [np.random.default_rng(7)] * 20]
    assert a == b
    # top_p keeps only the smallest set whose mass reaches p
    draws = {model_py.sample(logits, model_py.Sampling(top_p=0.5), np.random.default_rng(i), {}, []) for i in range(50)}
    assert draws == {1}


def test_stop_sequence_hold_back(model_py):
    assert model_py._held_back("hello wor", ["world"]) == 3
    assert model_py._held_back("hello", ["xyz"]) == 0
    assert model_py._find_stop("abc END def", ["END", "def"]) == 4
    assert model_py._find_stop("abc", []) is None
