"""The black-box service: a FastAPI app around any ``predict(images) -> labels`` (the pirated classifier, or the bare
model with ``--bare``).  Both look exactly alike from outside: the answers are labels, and nothing in a response
says whether a query was flagged.

- ``POST /v1/predict``: one or many 28x28 grey images, as JSON ``{"images": [[[...28 numbers...] x 28], ...]}`` (or
  ``{"images": <one 28x28 image>}``) with values in [0, 1], as multipart PNG upload(s) (field ``files``, repeatable),
  or as one raw ``image/png`` body.  Answers ``{"labels": [...]}``, one label per image, in order.
- ``GET /healthz``: ``{"status": "ok", "max_batch": ..., "image_shape": [28, 28], "num_classes": ...}``.
- ``/docs`` and ``/openapi.json``: the OpenAPI description.

Concurrent requests are answered in shared batches (:class:`~dnnpiracy.serve.batching.MicroBatcher`).  Bad input is
answered with a 4xx whose ``detail`` names the problem, and the service keeps serving: 400 for a body that cannot be
parsed (not JSON, not a PNG, a broken multipart body), 413 for a body over the size limit (checked on Content-Length
and on the bytes actually streamed), 415 for another content type, 422 for images of the wrong shape or type,
NaN/inf, values outside [0, 1], an empty batch or one above the maximum.  Anything else is a 500 with a generic
message (and a log line).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from dnnpiracy.serve.batching import MicroBatcher

log = logging.getLogger("dnnpiracy.serve")

SIDE = 28
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class ClientError(Exception):
    """A request the service refuses: ``status`` (4xx) and a message naming the problem."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class PredictResponse(BaseModel):
    labels: list[int]


class ErrorResponse(BaseModel):
    detail: str


class HealthResponse(BaseModel):
    status: str
    max_batch: int
    image_shape: list[int]
    num_classes: int


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


# --------------------------------------------------------------------------------------------- body size limit
class BodyLimitMiddleware:
    """Refuse a request body over ``max_bytes`` with 413: at once when Content-Length says so, else as soon as the
    streamed bytes pass the limit (chunked bodies, or a Content-Length that lies)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, n: int | None = None) -> ClientError:
        got = f" ({n} bytes)" if n is not None else ""
        return ClientError(413, f"request body too large{got}: the limit is {self.max_bytes} bytes "
                                f"({self.max_bytes / 2**20:g} MiB)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
                if n < 0:
                    raise ValueError
            except ValueError:
                return await _error(400, f"bad Content-Length header {declared[:40]!r}")(scope, receive, send)
            if n > self.max_bytes:
                return await _error(413, self._too_large(n).detail)(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except ClientError as exc:
            if started:
                raise
            await _error(exc.status, exc.detail)(scope, receive, send)


# ------------------------------------------------------------------------------------------------ parsing
def images_from_json(body: bytes, max_batch: int) -> np.ndarray:
    """``{"images": ...}`` -> (N, 28, 28) float32 in [0, 1]; ClientError naming what is wrong."""
    if not body.strip():
        raise ClientError(400, "empty body: send {\"images\": [...]} as JSON")
    try:
        doc = json.loads(body)
    except RecursionError:
        raise ClientError(400, "invalid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(400, f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ClientError(422, f"expected a JSON object {{\"images\": [...]}}, got a JSON {type(doc).__name__}")
    extra = sorted(set(doc) - {"images"})
    if extra:
        raise ClientError(422, f"unknown field(s) {', '.join(map(repr, extra[:5]))}: the body holds only \"images\"")
    if "images" not in doc:
        raise ClientError(422, "missing field \"images\"")
    return images_from_lists(doc["images"], max_batch)


def images_from_lists(images, max_batch: int) -> np.ndarray:
    if not isinstance(images, list):
        raise ClientError(422, f"\"images\" must be an array of 28x28 images (or one 28x28 image), got "
                               f"{type(images).__name__}")
    if len(images) == 0:
        raise ClientError(422, "empty batch: \"images\" holds no image")
    batch = isinstance(images[0], list) and len(images[0]) > 0 and isinstance(images[0][0], list)
    if batch and len(images) > max_batch:
        raise ClientError(422, f"batch of {len(images)} images exceeds the maximum of {max_batch} per request")
    try:
        arr = np.array(images, dtype=object)     # keeps each value's own type, for the check below
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ClientError(422, f"\"images\" is not an array of 28x28 images: {exc}") from None
    want = (len(images), SIDE, SIDE) if batch else (SIDE, SIDE)
    if arr.shape != want:
        raise ClientError(422, f"each image must be {SIDE} rows of {SIDE} numbers: got an array of shape "
                               f"{list(arr.shape)} (ragged or nested wrongly) where {list(want)} was expected")
    kinds = set(map(type, arr.flat))
    bad = kinds - {int, float}
    if bad:
        names = ", ".join(sorted({"null" if t is type(None) else "boolean" if t is bool else t.__name__ for t in bad}))
        raise ClientError(422, f"images must hold numbers only; found {names}")
    try:
        values = arr.astype(np.float64)
    except (OverflowError, ValueError) as exc:
        raise ClientError(422, f"a value is not a representable number: {exc}") from None
    return check_values(values if batch else values[None])


def check_values(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ClientError(422, "images hold NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if lo < 0 or hi > 1:
        raise ClientError(422, f"pixel values must be in [0, 1], got values in [{lo:g}, {hi:g}]")
    return values.astype(np.float32)


def image_from_png(data: bytes, name: str = "image") -> np.ndarray:
    """One PNG (28x28, greyscale: mode L, 1, I;16 or LA) -> (28, 28) float32 in [0, 1]."""
    if not data.startswith(PNG_SIGNATURE):
        raise ClientError(400, f"{name} is not a PNG image ({len(data)} bytes without the PNG signature)")
    from PIL import Image
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
        if img.size != (SIDE, SIDE):     # checked before decoding any pixel: no decompression bomb
            raise ClientError(422, f"{name} is {img.size[0]}x{img.size[1]} pixels; images must be {SIDE}x{SIDE}")
        img.load()
    except ClientError:
        raise
    except Exception as exc:       # PIL's errors for broken files are of many types
        raise ClientError(400, f"cannot decode {name} as PNG: {type(exc).__name__}: {exc}") from None
    mode = img.mode
    if mode == "LA":
        img, mode = img.getchannel("L"), "L"
    if mode in ("L", "1"):
        arr = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0
    else:
        raise ClientError(422, f"{name} has colour mode {mode}; images must be greyscale (PNG colour type 0, mode L)")
    if arr.shape != (SIDE, SIDE):
        raise ClientError(422, f"{name} decodes to shape {list(arr.shape)}, not {SIDE}x{SIDE}")
    return check_values(arr[None])[0]


async def images_from_multipart(request: Request, max_batch: int) -> np.ndarray:
    try:
        form = await request.form(max_files=max_batch + 1, max_fields=max_batch + 1,
                                  max_part_size=DEFAULT_MAX_BODY_BYTES)
    except StarletteHTTPException as exc:
        detail = str(exc.detail)
        if detail.startswith("Too many"):
            raise ClientError(422, f"more than {max_batch} images: the maximum is {max_batch} per request") from None
        raise ClientError(400, f"malformed multipart body: {detail}") from None
    try:
        parts = list(form.multi_items())
        if not parts:
            raise ClientError(422, "empty batch: the multipart body holds no image (send PNGs in the field \"files\")")
        if len(parts) > max_batch:
            raise ClientError(422, f"batch of {len(parts)} images exceeds the maximum of {max_batch} per request")
        out = []
        for i, (field, value) in enumerate(parts):
            if isinstance(value, str):
                data, name = value.encode("utf-8", "surrogateescape"), f"part {i} ({field!r})"
            else:
                data, name = await value.read(), f"file {i} ({value.filename or field!r})"
            out.append(image_from_png(data, name))
        return np.stack(out)
    finally:
        await form.close()


async def read_images(request: Request, max_batch: int) -> torch.Tensor:
    """The images of a predict request as a (N, 1, 28, 28) float32 tensor."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        arr = images_from_json(await request.body(), max_batch)
    elif media == "multipart/form-data":
        arr = await images_from_multipart(request, max_batch)
    elif media == "image/png":
        arr = image_from_png(await request.body(), "the body")[None]
    else:
        raise ClientError(415, f"unsupported Content-Type {ctype[:80]!r}: send application/json "
                               "({\"images\": [...]}), multipart/form-data (PNG files) or image/png")
    return torch.from_numpy(np.ascontiguousarray(arr)).view(-1, 1, SIDE, SIDE)


# ------------------------------------------------------------------------------------------------ OpenAPI
def _request_body_schema(max_batch: int) -> dict:
    pixel = {"type": "number", "minimum": 0, "maximum": 1}
    row = {"type": "array", "items": pixel, "minItems": SIDE, "maxItems": SIDE}
    image = {"type": "array", "items": row, "minItems": SIDE, "maxItems": SIDE,
             "description": f"one {SIDE}x{SIDE} grey image, row by row, values in [0, 1]"}
    batch = {"type": "array", "items": image, "minItems": 1, "maxItems": max_batch,
             "description": f"1 to {max_batch} images"}
    return {"required": True, "content": {
        "application/json": {"schema": {
            "type": "object", "required": ["images"], "additionalProperties": False,
            "properties": {"images": {"anyOf": [batch, image]}}}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["files"],
            "properties": {"files": {"type": "array", "minItems": 1, "maxItems": max_batch,
                                     "items": {"type": "string", "format": "binary"},
                                     "description": f"{SIDE}x{SIDE} greyscale PNG files"}}}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
    }}


_ERRORS = {400: "the body cannot be parsed (invalid JSON, not a PNG, broken multipart)",
           413: "the body is over the size limit",
           415: "unsupported Content-Type",
           422: "invalid images: wrong shape or type, NaN/inf, values outside [0, 1], empty batch, batch too large",
           500: "internal error"}


# ------------------------------------------------------------------------------------------------ the app
def create_app(predict_fn: Callable[[torch.Tensor], torch.Tensor], *, max_batch: int = DEFAULT_MAX_BATCH,
               batch_window_ms: float = 5.0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, num_classes: int = 10,
               title: str = "image classifier") -> FastAPI:
    """The service for ``predict_fn`` ((N, 1, 28, 28) float32 in [0, 1] -> (N,) labels), run on micro-batches of
    up to ``max_batch`` images collected over ``batch_window_ms``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    batcher = MicroBatcher(predict_fn, max_batch, batch_window_ms / 1000.0)
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title=title, version="1", description="Classifies 28x28 grey images.", lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)

    @app.exception_handler(ClientError)
    async def _client_error(_request: Request, exc: ClientError):
        return _error(exc.status, exc.detail)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception):
        log.error("unhandled error: %r", exc)
        return _error(500, "internal server error")

    @app.post("/v1/predict", response_model=PredictResponse, summary="Classify 28x28 grey images",
              responses={code: {"model": ErrorResponse, "description": text} for code, text in _ERRORS.items()},
              openapi_extra={"requestBody": _request_body_schema(max_batch)})
    async def predict(request: Request):
        try:
            x = await read_images(request, max_batch)
            labels = await batcher.submit(x)
        except ClientError as exc:
            return _error(exc.status, exc.detail)
        except Exception:
            log.exception("predict failed")
            return _error(500, "internal server error")
        return JSONResponse({"labels": [int(v) for v in labels.tolist()]})

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness and the request limits")
    async def healthz():
        return {"status": "ok", "max_batch": max_batch, "image_shape": [SIDE, SIDE], "num_classes": num_classes}

    return app


__all__ = ["create_app", "ClientError", "BodyLimitMiddleware", "images_from_json", "images_from_lists",
           "image_from_png", "read_images", "DEFAULT_MAX_BATCH", "DEFAULT_MAX_BODY_BYTES"]
