"""A small gRPC service for ferry (grpcio, no generated code): `echo.Echo/Say` answers "<revision>: <message>",
`echo.Echo/Count` streams N answers. Messages are UTF-8 text bytes (a real service would use protobuf; the wire
protocol, HTTP/2 and gRPC framing, is the same). Listens on 127.0.0.1:$PORT, h2c.

Knobs (environment): FAIL_RATE (0..1: the fraction of Say calls answered INTERNAL, a bad canary),
STREAM_INTERVAL_S (seconds between Count's answers). The message "fail" is always answered INTERNAL.

    ferry up examples/grpc/routes.yaml
    python examples/grpc/app.py call 127.0.0.1:8080 echo.localhost hello
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys

import grpc

SERVICE = "echo.Echo"
REVISION = os.environ.get("K_REVISION", "local")
FAIL_RATE = float(os.environ.get("FAIL_RATE", "0") or 0)


async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    text = request.decode()
    if text == "fail" or random.random() < FAIL_RATE:
        await context.abort(grpc.StatusCode.INTERNAL, "asked to fail")
    return f"{REVISION}: {text}".encode()


async def count(request: bytes, context: grpc.aio.ServicerContext):
    for i in range(int(request.decode() or "3")):
        yield f"{REVISION}: {i}".encode()
        await asyncio.sleep(float(os.environ.get("STREAM_INTERVAL_S", "0.01")))


def _raw(handler, kind):
    return kind(handler, request_deserializer=None, response_serializer=None)


async def serve() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Say": _raw(say, grpc.unary_unary_rpc_method_handler),
        "Count": _raw(count, grpc.unary_stream_rpc_method_handler),
    })])
    server.add_insecure_port(f"127.0.0.1:{os.environ.get('PORT', '8080')}")
    await server.start()
    print(f"listening on {os.environ.get('PORT', '8080')}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=5)  # in-flight calls finish


async def call(target: str, authority: str, message: str) -> None:
    async with grpc.aio.insecure_channel(target, options=[("grpc.default_authority", authority)]) as channel:
        print((await channel.unary_unary(f"/{SERVICE}/Say")(message.encode(), timeout=10)).decode())


if __name__ == "__main__":
    if sys.argv[1:2] == ["call"]:
        asyncio.run(call(*sys.argv[2:5]))
    else:
        asyncio.run(serve())
