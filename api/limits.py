"""A cap on request bodies (TASKMILL_MAX_BODY_BYTES), as ASGI middleware: a body declared larger is answered 413
before a byte of it is read, and a chunked body is cut off as soon as it passes the cap, so an oversized upload
never reaches the JSON parser or fills memory."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _TooLarge(Exception):
    """Raised into the app from `receive` once the body passes the cap: whatever it was doing is abandoned."""


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        if declared:
            if len(set(declared)) > 1 or not declared[0].isdigit():
                await self._refuse(send, 400, "Bad request", "the Content-Length header is not one whole number")
                return
            if int(declared[0]) > self.max_bytes:
                await self._refuse(send, 413, "Payload too large", self._reason())
                return

        received = 0
        over = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, over
            if over:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True  # and never read from the client again
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to the abandoned read (a 400, most likely) gives way to the 413 below
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if over and not started:
            await self._refuse(send, 413, "Payload too large", self._reason())

    def _reason(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes (TASKMILL_MAX_BODY_BYTES)"

    @staticmethod
    async def _refuse(send: Send, status: int, title: str, detail: str) -> None:
        body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
        # No `Connection: close`: uvicorn then discards what the client still sends of the body (unparsed, unkept)
        # and the client reads this answer; closing at once would reset the connection under a client still
        # sending, which then sees a connection error instead of the 413.
        headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
