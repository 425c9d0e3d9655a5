#!/usr/bin/env python3
"""A stand-in for the GitHub issues API for `make demo`: HTTPS on 127.0.0.1, records every
request it receives (method, path, Authorization header) as JSON lines."""
import argparse
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ISSUES = [
    {"number": 1, "title": "Crash on empty config", "state": "open"},
    {"number": 2, "title": "Docs: explain validFor", "state": "open"},
    {"number": 3, "title": "Flaky test: scheduler_retries", "state": "open"},
]


class Handler(BaseHTTPRequestHandler):
    def _record(self, body):
        entry = {
            "method": self.command,
            "path": self.path,
            "authorization": self.headers.get("Authorization"),
            "body": body,
        }
        with open(self.server.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def _send(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server naming)
        self._record(None)
        if self.path.split("?")[0] == "/repos/owner/repo/issues":
            self._send(200, ISSUES)
        else:
            self._send(404, {"message": "Not Found"})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        self._record(body)
        if self.path == "/repos/owner/repo/issues":
            n = len(ISSUES) + 1
            self._send(201, {"number": n, "title": body.get("title"),
                             "html_url": f"https://github.example/owner/repo/issues/{n}"})
        else:
            self._send(404, {"message": "Not Found"})

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--log", required=True)
    a = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.log_path = a.log
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    with open(a.port_file, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
