"""The owner's side of the wire: a small HTTP client for a served classifier (``dnnpiracy serve`` or anything that
speaks the same ``POST /v1/predict`` JSON), usable wherever a ``predict(images) -> labels`` black box is expected
(``dnnpiracy.watermark.verify``)."""

from __future__ import annotations

import httpx
import torch

SIDE = 28


class ServiceError(RuntimeError):
    """The service could not be reached, or refused or garbled an answer."""


class ServiceClient:
    """``ServiceClient(url).predict(images)``: images (N, 1, 28, 28) or (N, 28, 28) float in [0, 1] -> (N,) labels,
    sent in requests of at most the server's ``max_batch`` images (from ``/healthz``; 256 if it does not say)."""

    def __init__(self, url: str, timeout: float = 120.0, max_batch: int | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ServiceError(f"{url!r} is not an http:// or https:// URL")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._health: dict | None = None
        self._max_batch = max_batch

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ServiceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs) -> dict:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach {self.url}{path}: {type(exc).__name__}: {exc}") from exc
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200:
            detail = body.get("detail") if isinstance(body, dict) else r.text[:200]
            raise ServiceError(f"{self.url}{path} answered {r.status_code}: {detail}")
        if not isinstance(body, dict):
            raise ServiceError(f"{self.url}{path} answered something other than a JSON object")
        return body

    def health(self) -> dict:
        """``GET /healthz`` (cached)."""
        if self._health is None:
            self._health = self._request("GET", "/healthz")
        return self._health

    @property
    def max_batch(self) -> int:
        if self._max_batch is None:
            try:
                self._max_batch = int(self.health().get("max_batch", 256))
            except ServiceError:
                self._max_batch = 256       # a server without /healthz: the default limit
        return self._max_batch

    def num_classes(self, default: int = 10) -> int:
        try:
            return int(self.health().get("num_classes", default))
        except ServiceError:
            return default

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 3 or tuple(x.shape[1:]) != (SIDE, SIDE):
            raise ValueError(f"images must be (N, 1, {SIDE}, {SIDE}) or (N, {SIDE}, {SIDE}), got {tuple(images.shape)}")
        out = []
        for start in range(0, len(x), self.max_batch):
            part = x[start:start + self.max_batch]
            body = self._request("POST", "/v1/predict", json={"images": part.tolist()})
            labels = body.get("labels")
            if not isinstance(labels, list) or len(labels) != len(part) or \
                    not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
                raise ServiceError(f"{self.url}/v1/predict answered {str(labels)[:80]} for {len(part)} images")
            out.append(torch.tensor(labels, dtype=torch.long))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    __call__ = predict


__all__ = ["ServiceClient", "ServiceError"]
