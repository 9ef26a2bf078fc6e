#!/usr/bin/env python3
"""mini-MAR example: an HTTP server using only Python's standard library.

Routes:
  GET /           greeting, plus the config var GREETING if set
  GET /env/NAME   value of environment variable NAME, 404 if unset
  POST /echo      streams the request body back (Content-Length or chunked)
"""

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "shell-hello"

    def send_text(self, status, body):
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/":
            body = "Hello from mini-MAR (shell)\n"
            greeting = os.environ.get("GREETING")
            if greeting:
                body += greeting + "\n"
            self.send_text(200, body)
        elif path.startswith("/env/") and len(path) > len("/env/"):
            name = path[len("/env/"):]
            value = os.environ.get(name)
            if value is None:
                self.send_text(404, f"{name} is not set\n")
            else:
                self.send_text(200, value)
        elif path == "/echo" and self.command == "GET":
            self.echo()
        else:
            self.send_text(404, "not found\n")

    do_HEAD = do_GET

    def do_POST(self):
        if self.path.split("?", 1)[0] == "/echo":
            self.echo()
        else:
            self.send_text(404, "not found\n")

    do_PUT = do_POST

    def echo(self):
        content_type = self.headers.get("Content-Type", "application/octet-stream")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # Re-emit each chunk as soon as it is read.
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    break
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Skip trailers up to the blank line.
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.readline(1024)  # CRLF after the chunk
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return

        remaining = int(self.headers.get("Content-Length") or 0)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(remaining))
        self.end_headers()
        while remaining > 0:
            data = self.rfile.read(min(CHUNK, remaining))
            if not data:
                break
            remaining -= len(data)
            self.wfile.write(data)
            self.wfile.flush()
        if remaining:
            self.close_connection = True


def main():
    port = int(os.environ.get("PORT", "5000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    # Exit promptly (status 0) when the platform stops the dyno.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"shell-hello listening on 0.0.0.0:{port}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
