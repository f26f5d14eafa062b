"""Every request is checked before a servicer runs: undecodable bytes and NUL characters are the client's 400."""

import pytest
from google.protobuf import struct_pb2

from llmlab.experiments.v1 import experiments_service_pb2 as pb
from llmlab.runtime import InvalidArgument
from llmlab.runtime.intake import MAX_LIST_ITEMS, NUL, UNDECODABLE, check, first_violation, tolerant


def test_clean_requests_pass():
    req = pb.ListExperimentsRequest(search="quality", status="draft", limit=10)
    assert first_violation(req) is None
    check(req)


def test_nul_in_a_top_level_string_names_the_field():
    assert first_violation(pb.ListExperimentsRequest(search="a\x00b")) == ("search", NUL)
    with pytest.raises(InvalidArgument) as exc:
        check(pb.ListExperimentsRequest(search="\x00"))
    assert exc.value.details == {"field": "search", "value": None, "constraint": "must not contain NUL characters"}


def test_nul_inside_repeated_fields_structs_and_map_keys_is_found_by_its_json_path():
    tagged = pb.CreateExperimentRequest(name="ok", tags=["fine", "bad\x00"])
    assert first_violation(tagged) == ("tags[1]", NUL)
    params = struct_pb2.Struct()
    params.update({"style": {"tone": ["calm", "lo\x00ud"]}})
    assert first_violation(params, "params") == ("params.style.tone[1]", NUL)
    keyed = struct_pb2.Struct()
    keyed.update({"k\x00": 1})
    assert first_violation(keyed, "params") == ("params.k\x00", NUL)


def test_lists_past_the_cap_are_refused_by_name():
    many = pb.CreateExperimentRequest(name="ok", tags=["t"] * (MAX_LIST_ITEMS + 1))
    with pytest.raises(InvalidArgument) as exc:
        check(many)
    assert exc.value.details["field"] == "tags" and "at most" in exc.value.details["constraint"]


def test_a_deserializer_that_fails_becomes_the_undecodable_marker():
    # What Envoy forwards for ?search=%FF: the `search` string field holding bytes that are not UTF-8.
    number = pb.ListExperimentsRequest.DESCRIPTOR.fields_by_name["search"].number
    bad_utf8 = bytes([number << 3 | 2, 2, 0xFF, 0xFE])
    decode = tolerant(pb.ListExperimentsRequest.FromString)
    assert decode(pb.ListExperimentsRequest(search="ok").SerializeToString()).search == "ok"
    result = decode(bad_utf8)
    assert result is UNDECODABLE
    with pytest.raises(InvalidArgument) as exc:
        check(result)
    assert exc.value.message == "Request text must be valid UTF-8"
    assert tolerant(None) is None
