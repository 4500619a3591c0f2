"""A gRPC revision for the activator's h2c tests (grpcio, h2c on 127.0.0.1:$PORT): `echo.Echo/Say` takes LATENCY_MS
and answers "<revision> <pid> <most calls this instance ever had at once>", so a test sees from the answers alone
whether a concurrency limit held on every instance."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc

REVISION = os.environ.get("K_REVISION", "local")
LATENCY_S = float(os.environ.get("LATENCY_MS", "0")) / 1000
active = most = 0


async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    global active, most
    active += 1
    most = max(most, active)
    try:
        await asyncio.sleep(LATENCY_S)
        return f"{REVISION} {os.getpid()} {most}".encode()
    finally:
        active -= 1


async def serve() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("echo.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(say)})])
    server.add_insecure_port(f"127.0.0.1:{os.environ.get('PORT', '8080')}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=5)


if __name__ == "__main__":
    asyncio.run(serve())
