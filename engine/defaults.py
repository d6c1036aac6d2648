"""The defaults every entry point shares, torch-free so that ``advx --help`` shows them."""

from __future__ import annotations

DEFAULT_SURROGATES: tuple[str, ...] = ("effnet-lite0", "effnet-lite1")
DEFAULT_VERIFIERS: tuple[str, ...] = ("effnet-lite2",)

DEFAULT_MAX_SIDE = 1024  # folder runs: longer sides above this are attacked on a downscaled copy

# advx serve: where it listens, what one request may cost, and how much the service keeps
SERVE_HOST = "127.0.0.1"  # loopback: other machines need --host (and a --token)
SERVE_PORT = 8000
SERVE_REPLICAS = 1  # Ray Serve hardening replicas
SERVE_MAX_UPLOAD_MB = 20  # image upload cap, enforced while the body streams
SERVE_MAX_PIXELS = 40_000_000  # decoded pixels per image, read from the header first
SERVE_TIMEOUT_S = 600.0  # a request's deadline, from its arrival
SERVE_MAX_QUEUE = 32  # requests waiting for the worker (two batches of the default size)
SERVE_MAX_LABEL_SETS = 4  # label sets whose models and exports are kept
SERVE_TOKEN_ENV = "ADVX_TOKEN"  # the bearer token, when not given as --token
