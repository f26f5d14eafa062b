"""Helpers for the lab family's envelope and the documented JSON value conventions."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from google.protobuf import struct_pb2

from llmlab.common.v1 import common_pb2

from .context import current_request_id


def iso(ts: dt.datetime) -> str:
    """RFC 3339 UTC with second precision and a Z, the API's timestamps (docs/api.md "Common conventions")."""
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def meta(pagination: common_pb2.PaginationMeta | None = None) -> common_pb2.ResponseMeta:
    """`meta` with timestamp and request_id, plus pagination on lists."""
    m = common_pb2.ResponseMeta(timestamp=iso(utcnow()), request_id=current_request_id())
    if pagination is not None:
        m.pagination.CopyFrom(pagination)
    return m


def pagination(page: int, limit: int, total: int, *, estimated: bool = False,
               has_next: bool | None = None) -> common_pb2.PaginationMeta:
    """Pagination meta; an `estimated` total is flagged (`total_estimated: true`, docs/scale.md), and `has_next`,
    when the caller knows it exactly (it fetched one row past the page), overrides the one derived from total."""
    pages = math.ceil(total / limit) if limit else 0
    m = common_pb2.PaginationMeta(
        page=page, limit=limit, total=total, total_pages=pages,
        has_next=page < pages if has_next is None else has_next, has_previous=page > 1
    )
    if estimated:
        m.total_estimated = True
    return m


def value(v: Any) -> struct_pb2.Value:
    """A google.protobuf.Value; None becomes JSON null (documented nulls must print as null)."""
    out = struct_pb2.Value()
    if v is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int | float):
        out.number_value = v
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, dict):
        out.struct_value.update(v)
    elif isinstance(v, list | tuple):
        out.list_value.extend(v)
    else:
        raise TypeError(f"cannot convert {type(v).__name__} to google.protobuf.Value")
    return out


def seconds_text(ms: float) -> str:
    """A duration as the API writes it: "3.2s", "45m", "1h5m"."""
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60}m" if minutes % 60 else f"{minutes // 60}h"
