"""The model registry as the experiments service asks it: the inference service's GetModel over gRPC."""

from __future__ import annotations

import grpc

from llmlab.inference.v1 import inference_service_pb2 as inference_pb
from llmlab.inference.v1 import inference_service_pb2_grpc as inference_grpc
from llmlab.runtime import Unavailable, validation_error

# A lookup is one indexed row read in the inference service; past this the registry counts as unreachable.
LOOKUP_TIMEOUT_SECONDS = 5.0


class ModelRegistry:
    """Resolves the `model` of an experiment to a registered model's slug id, or refuses it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = inference_grpc.InferenceServiceStub(channel)

    async def resolve(self, model: str) -> str:
        """The registry's slug id for `model` (a slug id or UUID). Unknown: 400 naming `model`. The registry
        unreachable: 503, so that no experiment is stored with a model nobody checked."""
        try:
            found = await self._stub.GetModel(inference_pb.GetModelRequest(id=model), timeout=LOOKUP_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise validation_error(
                    "model", model, "must be a registered model id (GET /api/models lists them)"
                ) from None
            raise Unavailable(
                "The model registry cannot be reached to check `model`; nothing was stored, please retry"
            ) from None
        return found.model.id
