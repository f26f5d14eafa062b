"""Domain errors become google.rpc.Status with ErrorInfo, Struct details and BadRequest, as the gateway expects."""

import grpc
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from llmlab.runtime import FailedPrecondition, NotFound, validation_error


def _unpack(st: status_pb2.Status):
    out = {}
    for any_ in st.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, struct_pb2.Struct):
            if any_.Is(cls.DESCRIPTOR):
                msg = cls()
                any_.Unpack(msg)
                out[cls.DESCRIPTOR.name] = msg
    return out


def test_validation_error_carries_seed_000_details():
    err = validation_error("temperature", 3.0, "must be between 0 and 2")
    assert err.grpc_code == grpc.StatusCode.INVALID_ARGUMENT and err.status_http == 400
    st = status_pb2.Status.FromString(err.trailing_metadata()[0][1])
    assert st.code == code_pb2.INVALID_ARGUMENT and st.message == "Validation failed"
    parts = _unpack(st)
    assert parts["ErrorInfo"].reason == "VALIDATION_ERROR" and parts["ErrorInfo"].domain == "llmlab"
    details = dict(parts["Struct"])
    assert details == {"field": "temperature", "value": 3.0, "constraint": "must be between 0 and 2"}
    assert parts["BadRequest"].field_violations[0].field == "temperature"


def test_http_status_override_travels_in_error_info():
    err = FailedPrecondition("Cannot start experiment: no datasets configured")
    assert err.status_http == 422
    info = _unpack(err.to_status())["ErrorInfo"]
    assert info.reason == "UNPROCESSABLE_ENTITY" and info.metadata["http_status"] == "422"


def test_not_found_without_details_has_only_error_info():
    parts = _unpack(NotFound("Experiment with ID 9 not found", metadata={"experiment_id": 9}).to_status())
    assert set(parts) == {"ErrorInfo"}
    assert parts["ErrorInfo"].metadata["experiment_id"] == "9"


def test_a_huge_value_is_quoted_as_a_short_excerpt_with_its_length():
    err = validation_error("name", "a" * 900_000, "must be between 1 and 255 characters")
    (key, raw), = err.trailing_metadata()
    assert key == "grpc-status-details-bin" and len(raw) < 1024
    value = dict(_unpack(status_pb2.Status.FromString(raw))["Struct"])["value"]
    assert value.startswith("a" * 64) and value.endswith("(900000 characters)") and len(value) < 100


def test_every_part_of_an_error_is_bounded_whatever_the_caller_puts_in():
    long = "x" * 100_000
    err = NotFound(long, reason=long, metadata={long: long}, details={"items": [long] * 1000, long: {"a": long}},
                   field_violations=[(long, long)] * 500)
    assert len(err.message) < 400
    raw = err.trailing_metadata()[0][1]
    assert len(raw) <= 4096
    st = status_pb2.Status.FromString(raw)
    assert _unpack(st)["ErrorInfo"].reason.endswith("(100000 characters)")


def test_bounded_keeps_short_values_and_cuts_long_lists():
    from llmlab.runtime.errors import bounded, excerpt

    assert excerpt("short") == "short"
    assert bounded({"a": [1, 2.5, None, True, "s"]}) == {"a": [1, 2.5, None, True, "s"]}
    cut = bounded(list(range(50)))
    assert cut[:20] == list(range(20)) and cut[20] == "… 30 more" and len(cut) == 21
    assert bounded([[[[["deep"]]]]]) == [[[["…"]]]]
