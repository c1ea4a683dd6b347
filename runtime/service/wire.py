"""Requests that do not decode: refused as INVALID_ARGUMENT naming the field, never UNKNOWN.

The servers decode each request with `safe_deserializer(Message)`: a message that protobuf
refuses becomes a `BadRequest` (the servicer answers INVALID_ARGUMENT with its text) instead of an
exception inside gRPC (which a client sees as UNKNOWN). The usual cause is a string field with
invalid UTF-8; `bad_utf8_field` walks the wire format to name that field.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

import grpc


@dataclass(frozen=True, slots=True)
class BadRequest:
    message: str


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def bad_utf8_field(data: bytes, descriptor, path: str = "", depth: int = 0) -> str | None:
    """The dotted name of the first string field holding invalid UTF-8, or None."""
    if depth > 16:
        return None
    i = 0
    counts: dict[str, int] = {}
    try:
        while i < len(data):
            key, i = _varint(data, i)
            num, wt = key >> 3, key & 7
            if wt == 0:
                _, i = _varint(data, i)
            elif wt == 1:
                i += 8
            elif wt == 5:
                i += 4
            elif wt == 2:
                n, i = _varint(data, i)
                chunk, i = data[i:i + n], i + n
                f = descriptor.fields_by_number.get(num)
                if f is None:
                    continue
                name = f"{path}{f.name}"
                repeated = getattr(f, "is_repeated", None)
                if repeated is None:  # older protobuf
                    repeated = f.label == FieldDescriptor.LABEL_REPEATED
                if repeated:
                    k = counts.get(f.name, 0)
                    counts[f.name] = k + 1
                    name = f"{name}[{k}]"
                if f.type == FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return name
                elif f.type == FieldDescriptor.TYPE_MESSAGE:
                    found = bad_utf8_field(chunk, f.message_type, name + ".", depth + 1)
                    if found:
                        return found
            else:
                return None
    except ValueError:
        return None
    return None


def safe_deserializer(message_cls):
    def decode(data: bytes):
        try:
            return message_cls.FromString(data)
        except (DecodeError, RecursionError) as exc:
            try:
                field = bad_utf8_field(data, message_cls.DESCRIPTOR)
            except Exception:  # naming the field is a courtesy; the refusal is what matters
                field = None
            if field:
                return BadRequest(f"{field}: is not valid UTF-8")
            return BadRequest(f"request: not a valid {message_cls.DESCRIPTOR.full_name} message ({exc})")

    return decode


class SafeDecoding(grpc.aio.ServerInterceptor):
    """Every method's request decoder becomes `safe_deserializer` of its message type."""

    def __init__(self, request_types: dict[str, type]):
        self._types = request_types  # full method name -> request message class
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        cls = self._types.get(details.method)
        if handler is None or cls is None:
            return handler
        return handler._replace(request_deserializer=safe_deserializer(cls))


def request_types(service_descriptor, pb_module) -> dict[str, type]:
    out = {}
    for m in service_descriptor.methods:
        out[f"/{service_descriptor.full_name}/{m.name}"] = getattr(pb_module, m.input_type.name)
    return out


__all__ = ["BadRequest", "SafeDecoding", "bad_utf8_field", "request_types", "safe_deserializer"]
