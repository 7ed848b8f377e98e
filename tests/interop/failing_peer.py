#!/usr/bin/env python3
"""An upstream that fails on cue, for tests/peers.rs. It is a process of its own so
that a test can SIGKILL or SIGSTOP it with its sockets open. Python's standard
library only.

  failing_peer.py HOST [--never-read]

Listens on HOST, any free port, and prints "PORT n". Each connection is served by a
thread. A WebSocket handshake gets a correct 101, then the path decides:

  /echo   every message comes back (unmasked, as a server sends), a Close gets a
          Close, a ping a pong
  /half   one binary frame that announces HALF_OF bytes, of which only HALF_SENT are
          sent; prints "HALF" once they are written, then waits for the end
  /push   one binary frame that announces PUSH_LEN (1 GiB), its payload the bytes
          i % 251, written as fast as the socket takes them; prints "PUSHED n" after
          each chunk and "PUSH ENDED n" when the socket fails

Any other request gets 200 "ok". With --never-read the server accepts connections
and never reads a byte from them (nor closes them).

Every line goes to stdout, flushed at once: the test reads them as events.
"""
import base64
import hashlib
import socket
import struct
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HALF_OF = 1 << 20
HALF_SENT = 256 << 10
PUSH_LEN = 1 << 30
CHUNK = 64 << 10

lock = threading.Lock()


def say(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def read_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        part = sock.recv(n - len(out))
        if not part:
            return None
        out += part
    return bytes(out)


def read_head(sock):
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            return None
        head += byte
        if len(head) > 16384:
            return None
    return head.decode("latin-1")


def header(head, name):
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def frame_header(opcode, length):
    first = 0x80 | opcode
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def read_frame(sock):
    """One client frame: (opcode, unmasked payload), or None at the end."""
    start = read_exact(sock, 2)
    if start is None:
        return None
    opcode, length = start[0] & 0x0F, start[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", read_exact(sock, 2) or b"\0\0")[0]
    elif length == 127:
        length = struct.unpack("!Q", read_exact(sock, 8) or b"\0" * 8)[0]
    mask = read_exact(sock, 4) if start[1] & 0x80 else b"\0\0\0\0"
    payload = read_exact(sock, length)
    if mask is None or payload is None:
        return None
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


def echo(sock):
    while True:
        frame = read_frame(sock)
        if frame is None:
            return
        opcode, payload = frame
        if opcode == 0x8:
            sock.sendall(frame_header(0x8, len(payload)) + payload)
            return
        reply = 0xA if opcode == 0x9 else opcode
        sock.sendall(frame_header(reply, len(payload)) + payload)


def half(sock):
    sock.sendall(frame_header(0x2, HALF_OF) + bytes(i % 251 for i in range(HALF_SENT)))
    say("HALF")
    while sock.recv(CHUNK):
        pass


def push(sock):
    pattern = bytes(i % 251 for i in range(251 * (CHUNK // 251 + 1)))
    sent = 0
    try:
        sock.sendall(frame_header(0x2, PUSH_LEN))
        while sent < PUSH_LEN:
            # Each chunk starts where the pattern left off, so the stream is i % 251.
            offset = sent % 251
            sock.sendall(pattern[offset : offset + CHUNK])
            sent += CHUNK
            say(f"PUSHED {sent}")
    except OSError:
        pass
    say(f"PUSH ENDED {sent}")


def serve(sock):
    with sock:
        head = read_head(sock)
        if head is None:
            return
        path = head.split(" ")[1] if " " in head else "/"
        key = header(head, "sec-websocket-key")
        if key is None:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        try:
            {"/half": half, "/push": push}.get(path, echo)(sock)
        except OSError:
            pass


def main():
    host = sys.argv[1]
    never_read = "--never-read" in sys.argv[2:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(128)
    say(f"PORT {listener.getsockname()[1]}")
    held = []
    while True:
        sock, _ = listener.accept()
        if never_read:
            held.append(sock)
            say("ACCEPTED")
            continue
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
