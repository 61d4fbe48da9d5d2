"""OpenTelemetry traces (optional): a span per API request, execution and link exchange.

Off by default and free when off (OpenTelemetry is not even imported). It is on when the
``tracing`` extra is installed (``pip install 'flowlink[tracing]'``) and the standard variables
ask for it: ``OTEL_TRACES_EXPORTER`` (``otlp`` or ``console``) or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); the exporter reads
the rest of the ``OTEL_*`` variables itself (headers, service name, sampler, ...).
``OTEL_SDK_DISABLED=true`` turns it off again.

The W3C ``traceparent`` of the context that queues an execution (an API request, or the
execution that starts a child) is stored with it; the worker runs the execution in a span
that is a child of it. An execution started over a link carries its ``traceparent`` in the
``execution.start`` message (an optional field, sent only to peers that say they accept it),
so a run started in one server and executed in another is one trace.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from flowlink.observability.http import StatusNoted

log = logging.getLogger(__name__)

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_state: dict[str, Any] = {"tracer": None}


def valid_traceparent(value: object) -> bool:
    """Whether ``value`` is a W3C traceparent (version, trace id, parent id, flags)."""
    return (
        isinstance(value, str)
        and TRACEPARENT.match(value) is not None
        and value[3:35] != "0" * 32
        and value[36:52] != "0" * 16
    )


def wanted(environ: dict[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup(provider: Any = None) -> bool:
    """Turn tracing on with ``provider``, or as the ``OTEL_*`` variables say; True if on.

    Fails naming the missing package when the variables ask for traces but the ``tracing``
    extra is not installed.
    """
    if provider is None and not wanted():
        return False
    if importlib.util.find_spec("opentelemetry") is None:
        raise RuntimeError(
            "OTEL_* variables ask for traces but OpenTelemetry is not installed:"
            " pip install 'flowlink[tracing]'"
        )
    if provider is None:
        provider = _provider_from_env()
    _state["tracer"] = provider.get_tracer("flowlink")
    return True


def _provider_from_env() -> Any:
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "flowlink")})
    resource = resource.merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    for name in (n.strip() for n in names.split(",")):
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise RuntimeError(
                    "OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http:"
                    " pip install 'flowlink[tracing]'"
                ) from exc
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name != "none":
            raise RuntimeError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console)")
    return provider


def shutdown() -> None:
    """Stop tracing (used by tests that turn it on for a while)."""
    _state["tracer"] = None


def enabled() -> bool:
    """Whether spans are being made."""
    return _state["tracer"] is not None


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None (tracing off or no span)."""
    if _state["tracer"] is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _context_of(traceparent: str | None) -> Any:
    if not traceparent or not valid_traceparent(traceparent):
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


@contextlib.contextmanager
def span(
    name: str, *, traceparent: str | None = None, kind: str = "INTERNAL", **attributes: Any
) -> Iterator[Any]:
    """A span (current while the block runs), child of ``traceparent`` or of the current span.

    Yields the span, or None when tracing is off.
    """
    tracer = _state["tracer"]
    if tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    with tracer.start_as_current_span(
        name,
        context=_context_of(traceparent),
        kind=getattr(SpanKind, kind),
        attributes={k: v for k, v in attributes.items() if v is not None},
        record_exception=True,
        set_status_on_exception=True,
    ) as current:
        yield current
        if current.is_recording() and current.status.status_code is StatusCode.UNSET:
            current.set_status(Status(StatusCode.OK))


def set_error(current: Any, message: str) -> None:
    """Mark a span (from ``span``) as failed."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_status(Status(StatusCode.ERROR, message))


class TracingMiddleware:
    """A server span per HTTP request, continuing an incoming ``traceparent`` header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _state["tracer"] is None:
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope.get("headers") or ():
            if key == b"traceparent":
                incoming = value.decode("latin-1")
        noted = StatusNoted(send)
        with span(
            f"{scope['method']} {scope['path']}",
            traceparent=incoming,
            kind="SERVER",
            **{"http.request.method": scope["method"], "url.path": scope["path"]},
        ) as current:
            await self.app(scope, receive, noted)
            route = getattr(scope.get("route"), "path", None)
            if current is not None:
                if route:
                    current.update_name(f"{scope['method']} {route}")
                    current.set_attribute("http.route", route)
                current.set_attribute("http.response.status_code", noted.status)
                if noted.status >= 500:
                    set_error(current, f"HTTP {noted.status}")
