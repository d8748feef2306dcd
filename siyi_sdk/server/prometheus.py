"""The Prometheus endpoint of a server: ``ProtocolServer(metrics_path="/metrics")``.

The server serves its `siyi_sdk.metrics.Metrics` in the Prometheus text format at that path,
with nothing else for the user to set up: this module makes an OpenTelemetry SDK
`MeterProvider` of the server's own, read by OpenTelemetry's `PrometheusMetricReader`, which
writes into a `prometheus_client.CollectorRegistry` of the server's own too (not the process's
global one: two servers in one process, or a user's own registry, do not clash), and answers
each scrape with ``generate_latest`` of that registry. A scrape runs the instruments' callbacks
there and then, in the event loop: no thread, no timer.

OpenTelemetry's exporter rather than `prometheus_client` alone: the metrics are defined once,
as OpenTelemetry instruments, and reach Prometheus and an OTLP collector alike with the same
names (``rpc.server.call.duration`` becomes ``rpc_server_call_duration_seconds``). It needs the
``prometheus`` extra: ``pip install 'siyi-sdk[prometheus]'`` (a reader that takes a registry
came with ``opentelemetry-exporter-prometheus`` 0.63b0).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from aiohttp import web

__all__ = ["PrometheusEndpoint"]

logger = logging.getLogger(__name__)

_EXTRA_HINT = (
    "ProtocolServer(metrics_path=...) needs OpenTelemetry's SDK and Prometheus exporter: "
    "pip install 'siyi-sdk[prometheus]'"
)


class PrometheusEndpoint:
    """Serves a server's metrics to Prometheus (see the module docstring).

    Args:
        server: the `ProtocolServer` whose metrics are served (it makes this endpoint, so
            this module does not import it); `Metrics` is installed on it here.
        key: when set, a scrape must carry ``Authorization: Bearer <key>`` (else 401).

    Raises:
        ImportError: the ``prometheus`` extra is not installed.

    Attributes:
        registry: the `prometheus_client.CollectorRegistry` the metrics are written to.
        meter_provider: the OpenTelemetry SDK `MeterProvider` the server's `Metrics` uses.
    """

    def __init__(self, server: Any, key: str | None = None) -> None:
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.sdk.metrics import MeterProvider
            from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        except ImportError as exc:
            raise ImportError(_EXTRA_HINT) from exc
        from ..metrics import Metrics

        self.registry = CollectorRegistry(auto_describe=True)
        try:
            reader = PrometheusMetricReader(registry=self.registry)
        except TypeError as exc:  # an exporter older than 0.63b0: no `registry` keyword
            raise ImportError(_EXTRA_HINT + " (opentelemetry-exporter-prometheus>=0.63b0)") from exc
        # Not shut down at exit: the reader is pulled from (nothing to flush), and a
        # MeterProvider that registers an atexit hook per server would keep every one alive.
        self.meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        self._key = key.encode() if key is not None else None
        self._generate: Any = generate_latest
        self._content_type = CONTENT_TYPE_LATEST
        Metrics(meter_provider=self.meter_provider).install(server)

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler: the text format, or 401 without the right key."""
        if self._key is not None and not self._authorized(request):
            return web.Response(
                status=401,
                text="401: the metrics need 'Authorization: Bearer <key>'\n",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        body = self._generate(self.registry)
        return web.Response(body=body, headers={"Content-Type": self._content_type})

    def _authorized(self, request: web.Request) -> bool:
        assert self._key is not None
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Constant time: how much of a guess matched must not show in the answer's timing.
        return hmac.compare_digest(presented.strip().encode(), self._key)
