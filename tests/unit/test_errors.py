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
