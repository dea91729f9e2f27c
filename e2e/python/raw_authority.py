#!/usr/bin/env python3
"""A gRPC call written by hand on the HTTP/2 wire (the `h2` package, not grpcio), with any
`:authority`: what older grpc-go and grpc-java clients send over a unix socket (the raw
socket path), which a server must not refuse.

Usage: raw_authority.py SOCKET AUTHORITY
Calls runtime.v1.RuntimeService/Version with an empty request and prints one JSON object:
{"status": ":status", "grpc_status": "...", "reset": <error code or null>, "body_len": N}.
"""
import json
import socket
import sys

import h2.config
import h2.connection
import h2.events


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    path, authority = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    # Header validation off: the point is to send what real clients send.
    cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                    normalize_outbound_headers=False)
    conn = h2.connection.H2Connection(config=cfg)
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/runtime.v1.RuntimeService/Version"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
    # An empty VersionRequest: a gRPC message of length 0 (flag byte + 4-byte length).
    conn.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    s.sendall(conn.data_to_send())
    out = {"status": None, "grpc_status": None, "reset": None, "body_len": 0}
    done = False
    while not done:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                hdrs = {k.decode(): v.decode() for k, v in ev.headers}
                out["status"] = hdrs.get(":status")
                out["grpc_status"] = hdrs.get("grpc-status", out["grpc_status"])
            elif isinstance(ev, h2.events.DataReceived):
                out["body_len"] += len(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived):
                hdrs = {k.decode(): v.decode() for k, v in ev.headers}
                out["grpc_status"] = hdrs.get("grpc-status")
            elif isinstance(ev, h2.events.StreamReset):
                out["reset"] = int(ev.error_code)
                done = True
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
        pending = conn.data_to_send()
        if pending:
            s.sendall(pending)
    s.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
