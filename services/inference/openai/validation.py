"""OpenAI's request validation: the JSON body, its shape limits, and typed field reads with OpenAI's messages.

Error messages, `param` and `code` follow the strings the OpenAI API returns ("Invalid 'temperature': decimal above
maximum value. Expected a value <= 2, but got 3 instead.", `decimal_above_max_value`). Unknown fields are ignored.
Besides OpenAI's own checks, a body the service parses itself is refused before any field is read when it nests
deeper than MAX_JSON_DEPTH, holds an array longer than MAX_JSON_ARRAY, or a string with NUL or a lone surrogate
(neither survives the trip to Postgres, protobuf or a tokenizer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .tools import FUNCTION_NAME

# Deeper than any real request (a JSON schema in response_format or tool parameters runs a dozen levels); the
# standard library's parser recurses per level and fails with RecursionError near 1,000.
MAX_JSON_DEPTH = 64
# Longer than any array a request needs: a token-id prompt for a 100k-context model.
MAX_JSON_ARRAY = 100_000
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


class ProtocolError(Exception):
    """A request OpenAI would refuse. The servicer turns it into `{"error": {message, type, param, code}}` with
    `status` (the gateway's serving-family error body reads `param` and `code` from the domain error)."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
        self.type = type

    def body(self) -> dict[str, Any]:
        """OpenAI's error object (also the payload of an in-band error frame after a stream has started)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"ProtocolError({self.message!r}, param={self.param!r}, code={self.code!r}, status={self.status})"


def model_not_found(model: str) -> ProtocolError:
    """OpenAI's 404 for an unknown model id (raised by the servicer after a registry lookup)."""
    return ProtocolError(
        f"The model `{model}` does not exist or you do not have access to it.", None, "model_not_found", status=404
    )


# ---------------------------------------------------------------------------------------------------------------
# JSON and typed field access with OpenAI's messages

MALFORMED_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library "
    "correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def load_json_body(data: bytes | str) -> dict[str, Any]:
    """The request body as a JSON object; malformed JSON (NaN and Infinity included, invalid UTF-8) is a 400, and so
    is a body past the shape limits (check_shape)."""
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(MALFORMED_JSON) from None
    except RecursionError:  # nested past the parser's own limit (~1,000 levels)
        raise _too_deep(_deep_field(data)) from None
    if not isinstance(value, dict):
        raise ProtocolError(
            f"Invalid type for request body: expected an object, but got {kind_of(value)} instead.",
            code="invalid_type",
        )
    check_shape(value)
    return value


def check_shape(body: Mapping[str, Any]) -> None:
    """Refuse a decoded body nested deeper than MAX_JSON_DEPTH, with an array longer than MAX_JSON_ARRAY, or with
    a string (key or value) holding NUL or a lone surrogate. `param` names the top-level field it is under."""
    stack: list[tuple[Any, int, str]] = [(v, 2, k) for k, v in body.items()]
    for key in body:
        _check_text(key, key)
    while stack:
        value, depth, field = stack.pop()
        if isinstance(value, str):
            _check_text(field, value)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(field)
        if isinstance(value, list):
            if len(value) > MAX_JSON_ARRAY:
                raise ProtocolError(
                    f"Invalid '{field}': array too long. Expected an array with maximum length {MAX_JSON_ARRAY}, "
                    f"but got an array with length {len(value)} instead.",
                    field,
                    "array_above_max_length",
                )
            stack.extend((v, depth + 1, field) for v in value)
        else:
            for k, v in value.items():
                _check_text(field, k)
                stack.append((v, depth + 1, field))


def _check_text(field: str, text: str) -> None:
    bad = _BAD_CHARS.search(text)
    if bad is not None:
        what = "NUL characters (\\u0000)" if bad.group() == "\x00" else "unpaired surrogates"
        raise ProtocolError(f"Invalid '{field}': strings must not contain {what}.", field, "invalid_value")


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _deep_field(data: bytes | str) -> str:
    """The top-level field under which a body too deep for the parser nests past MAX_JSON_DEPTH ("body" when the
    body itself is the deep value). Reads tokens only until that depth."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes | bytearray) else data
    depth, key = 0, "body"
    for token in _TOKENS.finditer(text):
        t = token.group()
        if t[0] == '"':
            if depth == 1:
                key = t[1:-1]
        elif t in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return key if len(key) <= 64 else key[:64] + "..."
        else:
            depth -= 1
    return key


def _too_deep(field: str) -> ProtocolError:
    return ProtocolError(
        f"Invalid '{field}': nested too deeply. Expected at most {MAX_JSON_DEPTH} levels of arrays and objects.",
        field,
        "nesting_too_deep",
    )


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _join_values(values: Sequence[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def invalid_type(param: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(
        f"Invalid type for '{param}': expected {expected}, but got {kind_of(value)} instead.", param, "invalid_type"
    )


def missing(param: str) -> ProtocolError:
    return ProtocolError(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def invalid_value(param: str, value: Any, supported: Sequence[str]) -> ProtocolError:
    return ProtocolError(
        f"Invalid value: '{value}'. Supported values are: {_join_values(supported)}.", param, "invalid_value"
    )


def is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


class JsonObject:
    """Typed reads from one JSON object of the request; `path` prefixes the `param` of every error."""

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self.data = data
        self.path = path

    def param(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def _present(self, key: str, required: bool) -> Any:
        value = self.data.get(key)
        if value is None and required:
            raise missing(self.param(key))
        return value

    def string(
        self, key: str, *, required: bool = False, enum: Sequence[str] | None = None, max_len: int | None = None
    ) -> str | None:
        value = self._present(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise invalid_type(self.param(key), "a string", value)
        if enum is not None and value not in enum:
            raise invalid_value(self.param(key), value, enum)
        if max_len is not None and len(value) > max_len:
            raise ProtocolError(
                f"Invalid '{self.param(key)}': string too long. Expected a string with maximum length {max_len}, "
                f"but got a string with length {len(value)} instead.",
                self.param(key),
                "string_above_max_length",
            )
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise invalid_type(self.param(key), "a boolean", value)
        return value

    def integer(self, key: str, *, lo: int | None = None, hi: int | None = None, required: bool = False) -> int | None:
        value = self._present(key, required)
        if value is None:
            return None
        if not is_int(value):
            raise invalid_type(self.param(key), "an integer", value)
        value = int(value)
        check_range(self.param(key), value, lo, hi, "integer")
        return value

    def number(
        self, key: str, *, lo: float | None = None, hi: float | None = None, lo_exclusive: bool = False
    ) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_type(self.param(key), "a decimal", value)
        if lo_exclusive and lo is not None and value <= lo:
            raise ProtocolError(
                f"Invalid '{self.param(key)}': decimal below minimum value. Expected a value > {_bound(lo)}, "
                f"but got {_bound(value)} instead.",
                self.param(key),
                "decimal_below_min_value",
            )
        check_range(self.param(key), value, None if lo_exclusive else lo, hi, "decimal")
        return float(value)

    def obj(self, key: str, *, required: bool = False) -> JsonObject | None:
        value = self._present(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise invalid_type(self.param(key), "an object", value)
        return JsonObject(value, self.param(key))

    def array(self, key: str, *, required: bool = False, min_len: int = 0, max_len: int | None = None) -> list | None:
        value = self._present(key, required)
        if value is None:
            return None
        if not isinstance(value, list):
            raise invalid_type(self.param(key), "an array", value)
        check_length(self.param(key), value, min_len, max_len)
        return value


def _bound(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def check_range(param: str, value: float, lo: float | None, hi: float | None, kind: str) -> None:
    if lo is not None and value < lo:
        raise ProtocolError(
            f"Invalid '{param}': {kind} below minimum value. Expected a value >= {_bound(lo)}, "
            f"but got {given(value)} instead.",
            param,
            f"{kind}_below_min_value",
        )
    if hi is not None and value > hi:
        raise ProtocolError(
            f"Invalid '{param}': {kind} above maximum value. Expected a value <= {_bound(hi)}, "
            f"but got {given(value)} instead.",
            param,
            f"{kind}_above_max_value",
        )


def given(value: float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def check_length(param: str, value: list, min_len: int, max_len: int | None) -> None:
    if min_len and not value:
        raise ProtocolError(
            f"Invalid '{param}': empty array. Expected an array with minimum length {min_len}, "
            "but got an empty array instead.",
            param,
            "empty_array",
        )
    if len(value) < min_len:
        raise ProtocolError(
            f"Invalid '{param}': array too short. Expected an array with minimum length {min_len}, "
            f"but got an array with length {len(value)} instead.",
            param,
            "array_below_min_length",
        )
    if max_len is not None and len(value) > max_len:
        raise ProtocolError(
            f"Invalid '{param}': array too long. Expected an array with maximum length {max_len}, "
            f"but got an array with length {len(value)} instead.",
            param,
            "array_above_max_length",
        )


def item_param(arr_param: str, i: int) -> str:
    return f"{arr_param}[{i}]"


def check_name(param: str, name: str) -> None:
    if not FUNCTION_NAME.match(name):
        raise ProtocolError(
            f"Invalid '{param}': string does not match pattern. Expected a string that matches the pattern "
            "'^[a-zA-Z0-9_-]+$'.",
            param,
            "invalid_value",
        )
    if len(name) > 64:
        raise ProtocolError(
            f"Invalid '{param}': string too long. Expected a string with maximum length 64, "
            f"but got a string with length {len(name)} instead.",
            param,
            "string_above_max_length",
        )


