"""The pirated model as a black-box HTTP service (FastAPI + uvicorn), with dynamic micro-batching, and the owner's
HTTP client.  ``dnnpiracy serve`` runs it; ``dnnpiracy verify --url`` queries it; ``dnnpiracy bench-http`` loads it."""

from dnnpiracy.serve.app import ClientError, create_app
from dnnpiracy.serve.batching import MicroBatcher
from dnnpiracy.serve.client import ServiceClient, ServiceError

__all__ = ["create_app", "ClientError", "MicroBatcher", "ServiceClient", "ServiceError"]
