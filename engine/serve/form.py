"""The multipart/form-data body of ``POST /harden``, read as it streams, in memory, each part
held to its cap (the image to the upload cap, other fields to :data:`FIELD_BYTES`)."""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.requests import ClientDisconnect

FIELD_BYTES = 64 << 10  # a form field other than the image
MAX_PARTS = 16  # form parts a request may send


class FormError(Exception):
    """``drain``: read (and drop) the rest of the body before answering, for clients that read
    no answer before they have sent everything; ``close``: answer at once, then close."""

    def __init__(self, status: int, message: str, close: bool = False,
                 drain: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close, self.drain = status, message, close, drain


async def drain(request: Request, limit: int, timeout_s: float = 10.0) -> bool:
    """Read and drop the rest of a request body (at most ``limit`` bytes, for at most
    ``timeout_s``); True when all of it was read."""
    async def read() -> bool:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                return False
        return True

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except (TimeoutError, ClientDisconnect, RuntimeError):  # slow, gone, or consumed already
        return False


async def read_form(request: Request, *, max_body: int, max_upload: int
                    ) -> dict[str, bytearray]:
    """name -> bytes of each part; refused (413) once the body or a part crosses its cap."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    mtype, params = parse_options_header(request.headers.get("content-type"))
    if mtype != b"multipart/form-data":
        raise FormError(415, "expected a multipart/form-data body (fields image, label or "
                             "text, [label_set], [eps], [steps])")
    boundary = params.get(b"boundary")
    if not boundary:
        raise FormError(400, "malformed multipart body: no boundary in Content-Type")
    over = f"upload over {max_upload / (1 << 20):g} MB"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise FormError(400, f"bad Content-Length {declared!r}")
        if int(declared) > max_body:  # refused unparsed; one far over is not even read
            far = int(declared) > 2 * max_body
            raise FormError(413, over, close=far, drain=not far)
    parts: list[tuple[str, bytearray]] = []
    headers: dict[str, str] = {}
    hfield, hvalue = bytearray(), bytearray()
    ended = False

    def on_part_begin() -> None:
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        hfield.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        hvalue.extend(data[start:end])

    def on_header_end() -> None:
        headers[hfield.decode("latin-1").lower()] = hvalue.decode("latin-1")
        hfield.clear()
        hvalue.clear()

    def on_headers_finished() -> None:
        if len(parts) >= MAX_PARTS:
            raise FormError(400, f"more than {MAX_PARTS} form parts")
        name = parse_options_header(headers.get("content-disposition", ""))[1].get(b"name")
        if name is None:
            raise FormError(400, "malformed multipart body: a part without a name")
        parts.append((name.decode("utf-8", "replace"), bytearray()))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        name, got = parts[-1]
        cap = max_upload if name == "image" else FIELD_BYTES
        if len(got) + (end - start) > cap:
            raise FormError(413, over if name == "image" else
                            f"form field {name!r} over {cap >> 10} kB", close=True)
        got.extend(data[start:end])

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_end": on_end})
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_body:
                raise FormError(413, over, close=True)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise FormError(400, f"malformed multipart body: {e}") from None
    if not ended:
        raise FormError(400, "malformed multipart body: it ends before its closing boundary")
    form: dict[str, bytearray] = {}
    for name, got in parts:
        if name in form:
            raise FormError(400, f"form field {name!r} given twice")
        form[name] = got
    return form
