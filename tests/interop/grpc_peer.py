#!/usr/bin/env python3
"""A gRPC peer from another implementation (grpcio), for tests/grpc.rs.

  grpc_peer.py server [PORT]
      An insecure (h2c) grpcio server on 127.0.0.1:PORT (0 or absent: any free port);
      prints "PORT n". Service test.Echo with raw-bytes generic handlers:
        Unary         echoes; b"fail:X" aborts NOT_FOUND with message "not found: X"
                      and trailing metadata x-detail-bin = DETAIL; b"sleep:MS" sleeps
                      MS milliseconds first.
        ClientStream  answers the concatenation of every request.
        ServerStream  b"N:SIZE[:MS]" -> N messages of SIZE bytes, MS ms apart.
        Bidi          echoes each message as it arrives.
      A line "stop GRACE" on stdin stops it with that grace period in seconds (a
      GOAWAY, in-flight calls get GRACE to finish); it prints "STOPPING", then
      "STOPPED" and exits once stopped.

  grpc_peer.py client SCENARIO TARGET [CA]
      Runs SCENARIO against TARGET (host:port) over h2c, or over TLS verifying the
      server against CA with the name localhost. Exits 0 printing a summary on
      success, nonzero with the reason otherwise. Scenarios: unary, large,
      client_stream, server_stream, bidi, concurrent, error, deadline, unavailable,
      unimplemented, slow_stream, bidi_hold (see each function).
"""
import queue
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"
DETAIL = bytes([0, 1, 2, 0xFE, 0xFF]) + b"\r\n binary detail"
BIG = 64 << 20
OPTIONS = [
    ("grpc.max_send_message_length", BIG),
    ("grpc.max_receive_message_length", BIG),
]
# How long any one client step may take before the scenario fails rather than hangs.
STEP = 10


# ---- server ----


def unary(request, context):
    if request.startswith(b"fail:"):
        context.set_trailing_metadata((("x-detail-bin", DETAIL),))
        context.abort(grpc.StatusCode.NOT_FOUND, "not found: " + request[5:].decode())
    if request.startswith(b"sleep:"):
        time.sleep(int(request[6:]) / 1000)
    return request


def client_stream(requests, _context):
    return b"".join(requests)


def server_stream(request, context):
    parts = request.decode().split(":")
    n, size = int(parts[0]), int(parts[1])
    gap = int(parts[2]) / 1000 if len(parts) > 2 else 0
    for i in range(n):
        if i and gap:
            time.sleep(gap)
        if not context.is_active():
            return
        yield bytes([i % 256]) * size


def bidi(requests, _context):
    for message in requests:
        yield message


def serve(port=0):
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    # Enough workers for the 100 concurrent calls and the streams beside them.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=128), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    if port == 0:
        sys.exit("could not bind")
    server.start()
    print(f"PORT {port}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["stop"]:
            done = server.stop(float(words[1]))
            print("STOPPING", flush=True)
            done.wait()
            print("STOPPED", flush=True)
            return
    server.wait_for_termination()


# ---- client ----


class Failed(Exception):
    pass


def check(cond, why):
    if not cond:
        raise Failed(why)


def method(channel, name, kind="unary_unary"):
    return getattr(channel, kind)(f"/{SERVICE}/{name}")


def expect_error(call, code):
    """Runs `call`, which must fail with `code`; returns the error."""
    try:
        result = call()
    except grpc.RpcError as e:
        check(e.code() == code, f"expected {code}, got {e.code()}: {e.details()!r}")
        return e
    raise Failed(f"expected {code}, the call succeeded: {result!r:.80}")


def sluice_answered(e):
    """Fails unless the status came in grpc-status, not mapped by grpcio from an HTTP
    error status (which grpcio reports as 'Received http2 header with status')."""
    details = e.details() or ""
    check(details, "no grpc-message")
    check("http2 header with status" not in details, f"not a gRPC answer: {details!r}")


def unary_scenario(ch):
    check(method(ch, "Unary")(b"hello", timeout=STEP) == b"hello", "echo differs")
    return "unary echoed"


def large(ch):
    payload = bytes(range(256)) * (4 << 12)  # 4 MiB
    got = method(ch, "Unary")(payload, timeout=STEP)
    check(got == payload, f"4 MiB echo differs ({len(got)} bytes back)")
    return "4 MiB each way"


def client_stream_scenario(ch):
    parts = [bytes([i]) * 1000 for i in range(50)]
    got = method(ch, "ClientStream", "stream_unary")(iter(parts), timeout=STEP)
    check(got == b"".join(parts), f"concatenation differs ({len(got)} bytes)")
    return "50 messages joined"


def server_stream_scenario(ch):
    got = list(method(ch, "ServerStream", "unary_stream")(b"20:1000", timeout=STEP))
    check(len(got) == 20, f"{len(got)} messages")
    check(all(m == bytes([i]) * 1000 for i, m in enumerate(got)), "contents differ")
    return "20 messages streamed"


def bidi_scenario(ch):
    """Each request is sent only after the reply to the one before arrived: a proxy
    that held either direction back until the other ended would stall this."""
    replies = queue.Queue()
    messages = [f"message {i}".encode() for i in range(10)]

    def requests():
        for m in messages:
            yield m
            try:
                replies.get(timeout=STEP)
            except queue.Empty:
                return  # the call's own deadline reports it

    call = method(ch, "Bidi", "stream_stream")(requests(), timeout=STEP)
    got = []
    for reply in call:
        got.append(reply)
        replies.put(reply)
    check(got == messages, f"replies {got}")
    return "10 round trips, each before the next request"


def concurrent(ch):
    calls = [
        method(ch, "Unary").future(f"call {i}".encode(), timeout=STEP) for i in range(100)
    ]
    for i, c in enumerate(calls):
        check(c.result() == f"call {i}".encode(), f"call {i} answered wrong")
    return "100 concurrent calls"


def error(ch):
    e = expect_error(
        lambda: method(ch, "Unary")(b"fail:the-thing", timeout=STEP),
        grpc.StatusCode.NOT_FOUND,
    )
    check(e.details() == "not found: the-thing", f"message {e.details()!r}")
    trailing = dict(e.trailing_metadata() or ())
    check(trailing.get("x-detail-bin") == DETAIL, f"trailing metadata {trailing}")
    return "NOT_FOUND with message and binary metadata"


def deadline(ch):
    started = time.monotonic()
    expect_error(
        lambda: method(ch, "Unary")(b"sleep:2000", timeout=0.3),
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    took = time.monotonic() - started
    check(took < 1.5, f"took {took:.2f}s")
    return f"DEADLINE_EXCEEDED after {took:.2f}s"


def unavailable(ch):
    e = expect_error(
        lambda: method(ch, "Unary")(b"x", timeout=STEP), grpc.StatusCode.UNAVAILABLE
    )
    sluice_answered(e)
    return f"UNAVAILABLE: {e.details()}"


def unimplemented(ch):
    e = expect_error(
        lambda: ch.unary_unary("/test.Missing/Call")(b"x", timeout=STEP),
        grpc.StatusCode.UNIMPLEMENTED,
    )
    sluice_answered(e)
    return f"UNIMPLEMENTED: {e.details()}"


def slow_stream(ch):
    """A server stream of 30 messages 100 ms apart; prints FIRST when the first
    arrives, then OK n, or STATUS CODE details when the call fails."""
    count = 0
    try:
        for _ in method(ch, "ServerStream", "unary_stream")(b"30:100:100", timeout=STEP):
            count += 1
            if count == 1:
                print("FIRST", flush=True)
    except grpc.RpcError as e:
        return f"STATUS {e.code().name} after {count}: {e.details()}"
    return f"OK {count}"


def bidi_hold(ch):
    """Opens a bidi stream and echoes one message, prints OPEN, waits for a line on
    stdin, then echoes another on the same stream and ends it."""
    outgoing = queue.Queue()

    def requests():
        while (m := outgoing.get()) is not None:
            yield m

    call = method(ch, "Bidi", "stream_stream")(requests(), timeout=60)
    outgoing.put(b"before")
    check(next(call) == b"before", "first echo differs")
    print("OPEN", flush=True)
    got = {}
    reader = threading.Thread(target=lambda: got.update(line=sys.stdin.readline()))
    reader.start()
    reader.join(STEP * 3)
    check(got.get("line"), "no go-ahead on stdin")
    outgoing.put(b"after")
    check(next(call) == b"after", "second echo differs")
    outgoing.put(None)
    rest = list(call)
    check(rest == [], f"unexpected {rest}")
    check(call.code() == grpc.StatusCode.OK, f"ended {call.code()}")
    return "the stream carried a message after the go-ahead"


SCENARIOS = {
    "unary": unary_scenario,
    "large": large,
    "client_stream": client_stream_scenario,
    "server_stream": server_stream_scenario,
    "bidi": bidi_scenario,
    "concurrent": concurrent,
    "error": error,
    "deadline": deadline,
    "unavailable": unavailable,
    "unimplemented": unimplemented,
    "slow_stream": slow_stream,
    "bidi_hold": bidi_hold,
}


def client(scenario, target, ca=None):
    if ca:
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = OPTIONS + [("grpc.ssl_target_name_override", "localhost")]
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target, options=OPTIONS)
    with channel:
        try:
            summary = SCENARIOS[scenario](channel)
        except Failed as e:
            print(f"{scenario}: FAILED: {e}", flush=True)
            return 1
        except grpc.RpcError as e:
            print(f"{scenario}: FAILED: {e.code()} {e.details()!r}", flush=True)
            return 1
    print(f"{scenario}: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    else:
        sys.exit(client(*sys.argv[2:5]))
