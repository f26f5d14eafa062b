"""The OpenAI-compatible surface: validation -> parsing (into protocol's typed requests) -> plan -> backend ->
render, run by servicer.py. The pure modules' public names are re-exported here (app.py imports the servicer)."""

from .models import ModelInfo, ModelPricing, ModelQuery, list_models, parse_model_query, render_model
from .parsing import parse_chat_request, parse_completion_request
from .plan import (
    ChatPlan,
    CompletionPlan,
    EngineLimits,
    build_chat_plan,
    build_completion_plan,
    chatml,
    render_conversation,
)
from .protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    PromptInput,
    ResponseFormat,
    ToolChoice,
)
from .validation import (
    MALFORMED_JSON,
    MAX_JSON_ARRAY,
    MAX_JSON_DEPTH,
    ProtocolError,
    check_shape,
    invalid_type,
    invalid_value,
    load_json_body,
    missing,
    model_not_found,
)

__all__ = [
    "MALFORMED_JSON",
    "MAX_JSON_ARRAY",
    "MAX_JSON_DEPTH",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChatPlan",
    "CompletionPlan",
    "CompletionRequest",
    "EngineLimits",
    "ModelInfo",
    "ModelPricing",
    "ModelQuery",
    "PromptInput",
    "ProtocolError",
    "ResponseFormat",
    "ToolChoice",
    "build_chat_plan",
    "build_completion_plan",
    "chatml",
    "check_shape",
    "invalid_type",
    "invalid_value",
    "list_models",
    "load_json_body",
    "missing",
    "model_not_found",
    "parse_chat_request",
    "parse_completion_request",
    "parse_model_query",
    "render_conversation",
    "render_model",
]
