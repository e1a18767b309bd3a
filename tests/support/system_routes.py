"""Test-only routes for the system domain's subprocess tests (appended to DOMAIN_MODULES there)."""

from litestar import WebSocket, websocket


@websocket("/_test/ws-echo")
async def ws_echo(socket: WebSocket) -> None:
    await socket.accept()
    while True:
        text = await socket.receive_text()
        await socket.send_text(text)


route_handlers = [ws_echo]
