"""A gRPC proxy (grpcio, in the test's process) in front of the real server, which breaks or
refuses chosen calls: for faults the server alone does not make on cue (a stream that
breaks after the server stored a frame whose ack is then lost; a subscription whose
connection dies half-open, the server still counting its stream).

Bytes pass through undecoded. Each method has a plan: one dict per call, in order (calls
past the list are forwarded as they are):

- ``{"break_after": k}``: forward, and after ``k`` responses end the call ``UNAVAILABLE``.
  For ``PublishStream`` the ``k+1``-th ack is read from the server first (that frame is
  stored) and then lost. For ``Subscribe`` with ``"leak": True`` the server's stream is
  kept open (it still counts as a subscriber) until :meth:`FaultProxy.release`.
- ``{"break": True}`` (unary calls): forward, wait for the server's answer (a publish is
  stored), then end the call ``UNAVAILABLE``: the answer is lost.
- ``{"refuse": "PERMISSION_DENIED"}``: end the call at once with that status, unforwarded.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

_UNARY_STREAM = frozenset({"Subscribe", "WatchCluster"})
_STREAM_STREAM = frozenset({"PublishStream"})
_SKIP_METADATA = frozenset({"content-type", "user-agent", "te", "grpc-accept-encoding"})


def _forwarded(md: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in (md or ()) if not k.startswith(":") and k not in _SKIP_METADATA)


class FaultProxy:
    """Listens on ``127.0.0.1:0`` (:attr:`address`) and forwards to ``upstream``."""

    def __init__(self, upstream: str, plans: dict[str, list[dict[str, Any]]]) -> None:
        self.plans = plans
        #: Calls per method so far.
        self.calls: dict[str, int] = {}
        #: ``(method, status code name)`` of each call the server itself ended with an error.
        self.upstream_errors: list[tuple[str, str]] = []
        self._leaked: list[Any] = []
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(upstream)
        self.server = grpc.server(ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((_Handler(self),))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def plan(self, method: str) -> dict[str, Any]:
        with self._lock:
            n = self.calls[method] = self.calls.get(method, 0) + 1
        steps = self.plans.get(method, [])
        return steps[n - 1] if n <= len(steps) else {}

    def upstream_failed(self, method: str, err: grpc.RpcError) -> None:
        with self._lock:
            self.upstream_errors.append((method, err.code().name))

    def leak(self, call: Any) -> None:
        with self._lock:
            self._leaked.append(call)

    def release(self) -> None:
        """Lets the server streams kept open by ``"leak"`` go (as its keepalive would)."""
        with self._lock:
            leaked, self._leaked = self._leaked, []
        for call in leaked:
            call.cancel()

    def stop(self) -> None:
        self.release()
        self.server.stop(grace=None).wait(5)
        self._channel.close()


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def service(self, details: Any) -> Any:
        full = details.method
        name = full.rsplit("/", 1)[-1]
        proxy = self.proxy
        channel = proxy._channel

        def relay_error(err: grpc.RpcError, context: grpc.ServicerContext) -> None:
            proxy.upstream_failed(name, err)
            context.set_trailing_metadata(_forwarded(err.trailing_metadata()))
            context.abort(err.code(), err.details() or "")

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            step = proxy.plan(name)
            if "refuse" in step:
                context.abort(getattr(grpc.StatusCode, step["refuse"]), "refused by the proxy")
            try:
                answer = channel.unary_unary(full)(
                    request, metadata=_forwarded(context.invocation_metadata())
                )
            except grpc.RpcError as e:
                relay_error(e, context)
                raise
            if step.get("break"):
                context.abort(grpc.StatusCode.UNAVAILABLE, "broken by the proxy")
            return answer

        def server_stream(request: bytes, context: grpc.ServicerContext) -> Any:
            step = proxy.plan(name)
            if "refuse" in step:
                context.abort(getattr(grpc.StatusCode, step["refuse"]), "refused by the proxy")
            call = channel.unary_stream(full)(
                request, metadata=_forwarded(context.invocation_metadata())
            )
            try:
                context.send_initial_metadata(_forwarded(call.initial_metadata()))
                sent = 0
                for msg in call:
                    yield msg
                    sent += 1
                    if sent == step.get("break_after"):
                        if step.get("leak"):
                            proxy.leak(call)
                        else:
                            call.cancel()
                        context.abort(grpc.StatusCode.UNAVAILABLE, "broken by the proxy")
            except grpc.RpcError as e:
                if not step.get("leak"):
                    relay_error(e, context)
                raise

        def bidi(requests: Any, context: grpc.ServicerContext) -> Any:
            step = proxy.plan(name)
            if "refuse" in step:
                context.abort(getattr(grpc.StatusCode, step["refuse"]), "refused by the proxy")
            call = channel.stream_stream(full)(
                requests, metadata=_forwarded(context.invocation_metadata())
            )
            try:
                # The asyncio client writes once the stream's headers came.
                context.send_initial_metadata(_forwarded(call.initial_metadata()))
                sent = 0
                for msg in call:
                    if sent == step.get("break_after"):
                        call.cancel()  # this ack is lost: its frame is stored
                        context.abort(grpc.StatusCode.UNAVAILABLE, "broken by the proxy")
                    yield msg
                    sent += 1
            except grpc.RpcError as e:
                relay_error(e, context)
                raise

        if name in _STREAM_STREAM:
            return grpc.stream_stream_rpc_method_handler(bidi)
        if name in _UNARY_STREAM:
            return grpc.unary_stream_rpc_method_handler(server_stream)
        return grpc.unary_unary_rpc_method_handler(unary)
