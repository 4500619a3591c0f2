"""A revision for timeout tests (aiohttp, $PORT on 127.0.0.1): a response that starts late, streams in chunks, or
stalls, and a websocket echo.

  /healthz                       200
  /stream?start=S&chunks=N&every=E
                                 waits S seconds before the response head, then N chunks of "<i>\\n", E seconds apart
  /ws                            echoes text messages
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

REVISION = os.environ.get("K_REVISION", "stream")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def stream(request: web.Request) -> web.StreamResponse:
    start = float(request.query.get("start", "0"))
    chunks = int(request.query.get("chunks", "1"))
    every = float(request.query.get("every", "0"))
    await asyncio.sleep(start)
    response = web.StreamResponse(headers={"x-revision": REVISION})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(chunks):
        if i:
            await asyncio.sleep(every)
        await response.write(f"{i}\n".encode())
    await response.write_eof()
    return response


async def ws(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        await socket.send_str(message.data)
    return socket


def main() -> None:
    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/stream", stream), web.get("/ws", ws)])
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, handle_signals=True)


if __name__ == "__main__":
    main()
