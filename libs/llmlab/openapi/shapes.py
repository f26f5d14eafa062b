"""What the protos cannot say: each family's error body, the credential schemes and the HttpBody media types.

The error bodies are the ones gateway/errors.lua writes (one per API family; ops shares research's); the credential
schemes are docs/auth.md's; the HttpBody routes carry bytes the services write themselves, described here by media
type, and as OpenAI's JSON shapes for the completions routes (docs: README "OpenAI-compatible serving").
"""

from __future__ import annotations

REQUEST_ID = {"type": "string", "minLength": 1, "description": "The request's id (also the x-request-id header)."}
ANY: dict = {}

ERROR_SCHEMAS: dict[str, dict] = {
    "lab_error": {
        "type": "object",
        "required": ["success", "error", "meta"],
        "properties": {
            "success": {"const": False},
            "error": {
                "type": "object",
                "required": ["message", "statusCode", "code", "details"],
                "properties": {
                    "message": {"type": "string", "minLength": 1},
                    "statusCode": {"type": "integer", "minimum": 400, "maximum": 599},
                    "code": {"type": "string", "minLength": 1},
                    "details": ANY,
                },
            },
            "meta": {
                "type": "object",
                "required": ["timestamp", "request_id"],
                "properties": {"timestamp": {"type": "string"}, "request_id": REQUEST_ID},
            },
        },
    },
    "research_error": {
        "type": "object",
        "required": ["error", "message", "request_id"],
        "description": "Extra facts of the error (e.g. `required_permission`, `retry_after`) are top-level members.",
        "properties": {
            "error": {"type": "string", "pattern": "^[a-z0-9_]+$"},
            "message": {"type": "string", "minLength": 1},
            "details": ANY,
            "request_id": REQUEST_ID,
        },
    },
    "serving_error": {
        "type": "object",
        "required": ["error", "request_id"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string", "minLength": 1},
                    "type": {"type": "string", "minLength": 1},
                    "param": ANY,
                    "code": {"type": ["string", "null"]},
                },
            },
            "request_id": REQUEST_ID,
        },
    },
    "native_error": {
        "type": "object",
        "required": ["error", "request_id"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "minLength": 1},
                    "message": {"type": "string", "minLength": 1},
                    "details": ANY,
                },
            },
            "request_id": REQUEST_ID,
        },
    },
}

SECURITY_SCHEMES: dict[str, dict] = {
    "bearer_jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "An access token from POST /auth/token or /auth/refresh."},
    "bearer_api_key": {"type": "http", "scheme": "bearer", "bearerFormat": "sk-...",
                       "description": "An API key (POST /v1/auth/api-keys) as a bearer token."},
    "api_key_header": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                       "description": "An API key in the X-API-Key header."},
}

_MESSAGES = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant", "tool", "function", "developer"]},
            "content": {"type": ["string", "array", "null"]},
            "name": {"type": "string"},
            "tool_calls": {"type": "array", "items": {"type": "object"}},
            "tool_call_id": {"type": "string"},
        },
    },
}
_SAMPLING = {
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "n": {"type": ["integer", "null"], "minimum": 1},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
    "stop": {"type": ["string", "array", "null"], "items": {"type": "string"}},
    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "seed": {"type": ["integer", "null"]},
    "logprobs": {"type": ["boolean", "integer", "null"]},
    "user": {"type": "string"},
}
_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
_USAGE = {
    "type": "object",
    "required": list(_COUNTS),
    "properties": {k: {"type": "integer", "minimum": 0} for k in _COUNTS},
}


def _object_of(obj: str, choice: dict) -> dict:
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": obj},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": {"type": ["string", "null"]},
            "choices": {"type": "array", "items": choice},
            "usage": _USAGE,
        },
    }


OPENAI_SCHEMAS: dict[str, dict] = {
    "openai.CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            "model": {"type": "string"},
            "prompt": {"type": ["string", "array"], "items": {"type": "string"}},
            "echo": {"type": ["boolean", "null"]},
            "suffix": {"type": ["string", "null"]},
            **_SAMPLING,
        },
    },
    "openai.ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string"},
            "messages": _MESSAGES,
            "tools": {"type": "array", "items": {"type": "object"}},
            "tool_choice": {"type": ["string", "object"]},
            "functions": {"type": "array", "items": {"type": "object"}},
            "function_call": {"type": ["string", "object"]},
            "response_format": {"type": "object"},
            "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
            **_SAMPLING,
        },
    },
    "openai.Completion": _object_of("text_completion", {
        "type": "object",
        "required": ["index", "text", "finish_reason"],
        "properties": {"index": {"type": "integer"}, "text": {"type": "string"},
                       "logprobs": {"type": ["object", "null"]}, "finish_reason": {"type": ["string", "null"]}},
    }),
    "openai.ChatCompletion": _object_of("chat.completion", {
        "type": "object",
        "required": ["index", "message", "finish_reason"],
        "properties": {
            "index": {"type": "integer"},
            "message": {"type": "object", "required": ["role"],
                        "properties": {"role": {"const": "assistant"}, "content": {"type": ["string", "null"]},
                                       "tool_calls": {"type": "array", "items": {"type": "object"}},
                                       "function_call": {"type": "object"}}},
            "logprobs": {"type": ["object", "null"]},
            "finish_reason": {"type": ["string", "null"]},
        },
    }),
}

_SSE_DONE = ("Server-sent events: `data: <chunk JSON>` frames (OpenAI's `{kind}.chunk` objects) ending in "
             "`data: [DONE]`; sent when the request asks for `\"stream\": true`.")


def _openai(kind: str, request: str, response: str) -> tuple[dict, dict]:
    body = {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}}
    reply = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}},
        "text/event-stream": {"schema": {"type": "string", "description": _SSE_DONE.format(kind=kind)}},
    }
    return body, reply


_COMPLETION = _openai("text_completion", "openai.CompletionRequest", "openai.Completion")
_CHAT = _openai("chat.completion", "openai.ChatCompletionRequest", "openai.ChatCompletion")
_BYTES = {"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}

# Request bodies of the routes whose body is a google.api.HttpBody field, by RPC.
HTTP_BODY_REQUESTS: dict[str, dict] = {
    "/llmlab.inference.v1.OpenAIService/CreateCompletion": _COMPLETION[0],
    "/llmlab.inference.v1.OpenAIService/CreateChatCompletion": _CHAT[0],
    "/llmlab.files.v1.FileService/CreateFile": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {"file": {"type": "string", "contentMediaType": "application/octet-stream"},
                               "purpose": {"type": "string"}},
            }
        }
    },
    "/llmlab.files.v1.TransferService/PutSignedUpload": _BYTES,
}

# Responses of the RPCs that return google.api.HttpBody, by RPC.
HTTP_BODY_RESPONSES: dict[str, dict] = {
    "/llmlab.inference.v1.OpenAIService/CreateCompletion": _COMPLETION[1],
    "/llmlab.inference.v1.OpenAIService/CreateChatCompletion": _CHAT[1],
    "/llmlab.inference.v1.ModelService/ListResearchProviders": {
        "application/json": {
            "schema": {"type": "array", "items": {"$ref": "#/components/schemas/llmlab.inference.v1.ResearchProvider"}}
        }
    },
    "/llmlab.files.v1.FileService/GetFileContent": _BYTES,
    "/llmlab.files.v1.TransferService/GetSignedDownload": _BYTES,
    "/llmlab.analytics.v1.OpsService/GetMetrics": {
        "text/plain": {"schema": {"type": "string", "description": "Prometheus text exposition format 0.0.4."}}
    },
    "/llmlab.analytics.v1.OpsService/GetOpenApiDocument": {
        "application/json": {"schema": {"type": "object", "required": ["openapi", "info", "paths"]}}
    },
    "/llmlab.analytics.v1.OpsService/GetApiReference": {"text/html": {"schema": {"type": "string"}}},
    "/llmlab.analytics.v1.OpsService/GetApiReferenceAsset": {
        "application/javascript": {"schema": {"type": "string"}},
        "text/css": {"schema": {"type": "string"}},
        "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
    },
}
# Message types the HttpBody descriptions above refer to: the document keeps their component schemas.
HTTP_BODY_TYPES = (".llmlab.inference.v1.ResearchProvider",)
