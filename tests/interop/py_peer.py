#!/usr/bin/env python3
"""A WebSocket peer from another implementation (the `websockets` package).

  py_peer.py server [CERT KEY]   echo server on 127.0.0.1:0 (with TLS given a certificate
                       and key); prints "PORT n"; echoes messages, selects the first
                       offered subprotocol, closes with the code and reason it receives
                       in a "close CODE REASON" message.
  py_peer.py client URL [CA]   connects (offering subprotocols; for wss:// verifying the
                       server against CA), checks text, binary, a 1 MiB message,
                       ping/pong and the close handshake; exits 0 on success.
  py_peer.py wait-close URL   connects, echoes one message, prints "OPEN" and the
                       extensions agreed ("EXT ..."), then waits for the server side
                       to close and prints "CLOSED code".
The server prints "CLOSED code" each time a connection ends, with the code it got.
"""
import asyncio
import ssl
import sys

import websockets


async def serve(cert=None, key=None) -> None:
    async def handler(ws):
        try:
            async for msg in ws:
                if isinstance(msg, str) and msg.startswith("close "):
                    _, code, reason = msg.split(" ", 2)
                    await ws.close(int(code), reason)
                    return
                await ws.send(msg)
        finally:
            try:
                print(f"CLOSED {ws.close_code}", flush=True)
            except OSError:
                pass  # nobody reads the server's output past its port


    def select(_conn, offered):
        return offered[0] if offered else None

    tls = None
    if cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
    async with websockets.serve(
        handler, "127.0.0.1", 0, select_subprotocol=select, max_size=None, ssl=tls
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await asyncio.Future()


async def client(url: str, ca=None) -> int:
    # A browser-grade check: the system's rules for names and chains, this CA as root.
    tls = ssl.create_default_context(cafile=ca) if ca else None
    async with websockets.connect(
        url, subprotocols=["chat.v2", "chat.v1"], max_size=None, ssl=tls
    ) as ws:
        assert ws.subprotocol == "chat.v2", ws.subprotocol
        await ws.send("hello from python")
        assert await ws.recv() == "hello from python"
        payload = bytes(range(256)) * 4096  # 1 MiB
        await ws.send(payload)
        assert await ws.recv() == payload
        latency = await (await ws.ping(b"py"))
        assert latency >= 0
        await ws.send("close 4321 python says bye")
        try:
            await ws.recv()
            raise AssertionError("expected the server to close")
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4321, closed
            assert closed.rcvd.reason == "python says bye", closed
    print("python client: all checks passed")
    return 0


async def wait_close(url: str) -> int:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send("before the drain")
        assert await ws.recv() == "before the drain"
        headers = getattr(ws, "response", None)
        headers = headers.headers if headers is not None else ws.response_headers
        print(f"EXT {headers.get('Sec-WebSocket-Extensions', '')}", flush=True)
        print("OPEN", flush=True)
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            pass
        print(f"CLOSED {ws.close_code}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(serve(*sys.argv[2:4]))
    elif sys.argv[1] == "wait-close":
        sys.exit(asyncio.run(wait_close(sys.argv[2])))
    else:
        sys.exit(asyncio.run(client(*sys.argv[2:4])))
