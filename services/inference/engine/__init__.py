"""Our continuous-batching generation engine on plain onnxruntime, over the onnxruntime-genai builder's graph."""

from .artifact import GraphInfo, ModelArtifact, add_last_token_gather, load_artifact
from .chat_template import CHATML_TEMPLATE, ChatTemplate, chatml, flatten_content
from .engine import Engine, EngineConfig, EngineStats, collect
from .errors import ContextLengthExceeded, EngineError, EngineOverloaded, EngineStopped, InvalidRequest
from .runner import KVCache, ModelRunner
from .sampling import RequestSampler, SampledToken, sample_batch
from .tokenizer import IncrementalDetokenizer, ModelTokenizer, StopMatcher

__all__ = [
    "CHATML_TEMPLATE",
    "ChatTemplate",
    "ContextLengthExceeded",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineOverloaded",
    "EngineStats",
    "EngineStopped",
    "GraphInfo",
    "IncrementalDetokenizer",
    "InvalidRequest",
    "KVCache",
    "ModelArtifact",
    "ModelRunner",
    "ModelTokenizer",
    "RequestSampler",
    "SampledToken",
    "StopMatcher",
    "add_last_token_gather",
    "chatml",
    "collect",
    "flatten_content",
    "load_artifact",
    "sample_batch",
]
