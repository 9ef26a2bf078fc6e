"""mini-MAR example: a Flask app served by gunicorn (see Procfile)."""

import os

from flask import Flask, Response, request, stream_with_context

app = Flask(__name__)


def text(body, status=200):
    return Response(body, status=status, mimetype="text/plain")


@app.get("/")
def index():
    body = "Hello from mini-MAR (Python)\n"
    greeting = os.environ.get("GREETING")
    if greeting:
        body += greeting + "\n"
    return text(body)


@app.get("/env/<name>")
def env(name):
    value = os.environ.get(name)
    if value is None:
        return text(f"{name} is not set\n", 404)
    return text(value)


@app.route("/echo", methods=["GET", "POST", "PUT"])
def echo():
    """Stream the request body back as it arrives.

    gunicorn's read(n) waits for n bytes (or the end of the body) and reads
    the socket 1 KiB at a time, so reading 1 KiB pieces sends each piece back
    as soon as it has arrived, long before a big upload has ended.
    """

    def chunks():
        while True:
            chunk = request.stream.read(1024)
            if not chunk:
                break
            yield chunk

    return Response(
        stream_with_context(chunks()),
        mimetype=request.mimetype or "application/octet-stream",
    )


if __name__ == "__main__":
    # Development server; the Procfile runs gunicorn instead.
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "5000")))
