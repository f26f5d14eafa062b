"""A stand-in for Triton's `triton_python_backend_utils`, enough to drive deploy/triton's model.py outside Triton.

It is not Triton: it implements the handful of names model.py uses (Tensor, InferenceResponse, TritonError,
get_input_tensor_by_name, the FINAL flag, the decoupled-policy check) with Triton's documented semantics."""

from __future__ import annotations

import importlib.util
import pathlib
import queue
import sys
import types
from typing import Any

import numpy as np

MODEL_DIR = pathlib.Path(__file__).parents[3] / "deploy" / "triton" / "model_repository" / "smollm2-135m-instruct"
FINAL = 1


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self.output_tensors = output_tensors or []
        self.error = error

    def outputs(self) -> dict[str, np.ndarray]:
        return {t.name(): t.as_numpy() for t in self.output_tensors}


class ResponseSender:
    """Collects (response, flags) pairs in a thread-safe queue, as Triton's sender hands them to the frontend."""

    def __init__(self) -> None:
        self.sent: queue.Queue[tuple[InferenceResponse | None, int]] = queue.Queue()

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        self.sent.put((response, flags))


class Request:
    def __init__(self, inputs: dict[str, np.ndarray]) -> None:
        self.inputs = inputs
        self.sender = ResponseSender()
        self.cancel_flag = False

    def get_response_sender(self) -> ResponseSender:
        return self.sender

    def is_cancelled(self) -> bool:
        return self.cancel_flag


def _module() -> types.ModuleType:
    m = types.ModuleType("triton_python_backend_utils")
    m.Tensor = Tensor
    m.TritonError = TritonError
    m.InferenceResponse = InferenceResponse
    m.TritonModelException = RuntimeError
    m.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL

    def get_input_tensor_by_name(request: Request, name: str) -> Tensor | None:
        return Tensor(name, request.inputs[name]) if name in request.inputs else None

    def using_decoupled_model_transaction_policy(config: dict[str, Any]) -> bool:
        return bool(config.get("model_transaction_policy", {}).get("decoupled"))

    m.get_input_tensor_by_name = get_input_tensor_by_name
    m.using_decoupled_model_transaction_policy = using_decoupled_model_transaction_policy
    return m


def load_model_module() -> types.ModuleType:
    """deploy/triton's model.py, imported with the stand-in utils in place of Triton's."""
    sys.modules["triton_python_backend_utils"] = _module()
    spec = importlib.util.spec_from_file_location("llmlab_triton_smollm2_model", MODEL_DIR / "1" / "model.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def model_config_json() -> str:
    """config.pbtxt as the JSON Triton hands to `initialize(args["model_config"])`."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse((MODEL_DIR / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToJson(cfg, preserving_proto_field_name=True)
