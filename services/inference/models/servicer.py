"""ModelService: the lab family's and the research family's RPCs over the one model registry, composed."""

from __future__ import annotations

from llmlab.inference.v1 import model_service_pb2_grpc as pb_grpc

from ..usage import UsageRecorder
from .lab_servicer import LabModels
from .manager import ModelManager
from .research_servicer import ResearchModels


class ModelServicer(LabModels, ResearchModels, pb_grpc.ModelServiceServicer):
    """The lab family's `/api/models...` (lab_servicer) and the research family's `/models...` (research_servicer)."""

    def __init__(self, models: ModelManager, usage: UsageRecorder) -> None:
        self._models = models
        self._usage = usage
