"""Automatic instrumentation: `Tracing` (and `Metrics`) wherever OpenTelemetry is configured.

A `ProtocolServer` calls `instrument` when it starts serving (``start()``, ``async with``, or
the startup of an application it is attached to), and so does a client-side sender when it
starts (a `ProtocolClient`, a `WebSocketAdapter`, an `HttpAdapter`, an `AdapterManager`). So
configuring OpenTelemetry the usual way, a global `TracerProvider` (and `MeterProvider`) of
the OpenTelemetry SDK set before the server or client starts, is all it takes.

What it costs when nothing is configured: at start, two dictionary lookups when OpenTelemetry
was never imported, or one look at the global providers when it was; per request, nothing,
since no middleware is added unless a provider of an SDK is set (the API's own default, a
proxy or no-op provider, records nothing, and a middleware around it would still cost each
request its call).

The rules:

- Tracing is installed when the global tracer provider is not one of the API's own (its
  proxy or no-op provider) and ``OTEL_SDK_DISABLED`` is not ``true``; metrics likewise with
  the global meter provider, when `siyi_sdk.metrics` is there.
- Never twice on one object, and not at all where a `Tracing` (or `Metrics`) was installed by
  hand: that one, with its own provider or its place in the chain, is kept.
- An adapter inside an `AdapterManager` is instrumented through its manager only (each call
  passes both chains: instrumenting both would record two spans of every call).
- ``SIYI_TELEMETRY=0`` (or ``false``, ``off``, ``no``) in the environment, read once, turns it
  off for the whole process; `opt_out(target)` for one server or client.

Installed at start, the middleware comes after (inside) those the user added before; install
`Tracing` by hand to put it elsewhere.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import weakref
from typing import Any

__all__ = ["ENVIRONMENT_VARIABLE", "instrument", "opt_out"]

logger = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "SIYI_TELEMETRY"
"""Set to ``0``, ``false``, ``off`` or ``no`` to turn automatic instrumentation off."""

_OFF_VALUES = frozenset({"0", "false", "off", "no"})

TRACING = "tracing"
METRICS = "metrics"

# What instrument() installed, or found installed, on each object (servers and adapters are
# weak-referenceable; a finished one leaves nothing behind).
_done: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
# One Tracing / Metrics per global provider, shared by every object instrumented: the global
# provider is set once per process, and one Metrics creates its instruments once.
_shared: dict[str, tuple[Any, Any]] = {}
_enabled: bool | None = None


def _is_enabled() -> bool:
    """False when ``SIYI_TELEMETRY`` says off (read on first use, then kept)."""
    global _enabled
    if _enabled is None:
        value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
        _enabled = value not in _OFF_VALUES
    return _enabled


def opt_out(target: Any) -> None:
    """Never instrument `target` (a server or a client-side sender) automatically.

    Call it before the target starts. `Tracing().install(target)` by hand still works.
    """
    _done[target] = {TRACING, METRICS}


def instrument(target: Any) -> bool:
    """Install `Tracing` (and `Metrics`) on `target` if OpenTelemetry is configured globally.

    Servers and the SDK's own senders call this when they start; calling it again, or on an
    object already instrumented by hand, does nothing.

    Args:
        target: a `ProtocolServer`, an adapter (a `ProtocolClient`, a `WebSocketAdapter`, an
            `HttpAdapter`), an `AdapterManager`, or an `Api` (its sender is instrumented).

    Returns:
        True when something was installed now.
    """
    # Configuring a provider imports its API module first (or names it in the environment):
    # when neither happened, nothing is configured, and OpenTelemetry stays unimported.
    modules = sys.modules
    if (
        "opentelemetry.trace" not in modules
        and "opentelemetry.metrics" not in modules
        and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
        and "OTEL_PYTHON_METER_PROVIDER" not in os.environ
    ):
        return False
    if not _is_enabled():
        return False
    target = getattr(target, "sender", target)  # an Api: its sender's chain is the one
    if getattr(target, "_parent", None) is not None:
        return False  # an adapter of a manager: the manager's chain sees its calls
    try:
        done = _done.setdefault(target, set())
    except TypeError:  # not weak-referenceable: a target of the user's own making
        return False
    installed = False
    if TRACING not in done:
        installed |= _install(target, done, TRACING)
    if METRICS not in done:
        installed |= _install(target, done, METRICS)
    return installed


def _install(target: Any, done: set[str], kind: str) -> bool:
    """Install one kind (`TRACING` or `METRICS`) on `target` if its global provider records."""
    provider = _global_provider(kind)
    if provider is None:
        return False  # not configured yet: a later start looks again
    factory = _factory(kind)
    if factory is None:
        done.add(kind)  # the module is not there: there is nothing to install, ever
        return False
    if _installed_by_hand(target, factory):
        done.add(kind)
        return False
    shared = _shared.get(kind)
    if shared is None or shared[0] is not provider:
        shared = _shared[kind] = (provider, factory())
    shared[1].install(target)
    done.add(kind)
    logger.debug("%s installed on %r (a global provider is configured)", kind, target)
    return True


def _global_provider(kind: str) -> Any:
    """The global provider of `kind` when it is an SDK's one (one that records), else None."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None  # the SDK hands out no-op tracers and meters then
    try:
        if kind == TRACING:
            from opentelemetry import trace

            provider: Any = trace.get_tracer_provider()
            api_module = "opentelemetry.trace"
        else:
            from opentelemetry import metrics

            provider = metrics.get_meter_provider()
            api_module = "opentelemetry.metrics"
    except ImportError:  # the otel extra is not installed
        return None
    # The API's own providers (the proxy it hands out until one is set, the no-op one) live
    # in its modules; anything else is an SDK, OpenTelemetry's or another.
    module = type(provider).__module__
    if module == api_module or module.startswith(api_module + "."):
        return None
    return provider


def _factory(kind: str) -> type | None:
    """The class to install for `kind`; None when its module is not there (metrics, for now)."""
    if kind == TRACING:
        from .telemetry import Tracing

        return Tracing
    try:
        # Looked up by name when a server or client starts, as a plug-in would be: the module
        # is optional, and it may sit above the server and the adapters (it reads their state),
        # which import this one.
        metrics = importlib.import_module(f"{__package__}.metrics")
    except ImportError:
        return None
    found = getattr(metrics, "Metrics", None)
    return found if isinstance(found, type) else None


def _installed_by_hand(target: Any, factory: type) -> bool:
    """True when a middleware of a `factory` instance is in `target`'s chain already."""
    dispatcher = getattr(target, "dispatcher", None)
    chain = dispatcher.chain if dispatcher is not None else getattr(target, "_middleware", None)
    # The chain's tuple: `Chain` has no public view of its middlewares, and this is the package.
    middlewares = getattr(chain, "_middlewares", ())
    return any(isinstance(getattr(m, "__self__", None), factory) for m in middlewares)
