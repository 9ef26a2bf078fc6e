"""A wasi:http handler in Python, built into a WebAssembly component by componentize-py.

mini-MAR's wasm buildpack builds it on `git push` (app.json names the module to build and
its source), precompiles it, and serves it in-process: no port, no process, a fresh
instance per request.

GET /              a greeting that uses the GREETING config var
GET /env?name=NAME the value of one config var (404 when unset)
GET /count         how many requests this instance has served: always 1 with a fresh instance
                   per request (the default), counting up with MAR_WASM_INSTANCE_REUSE=true
POST /echo         the request body back, with its length in X-Echo-Length
anything else      404
"""

import os
from urllib.parse import parse_qs

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    Method_Post,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

CHUNK = 4096

# Module state lives as long as the instance: one request by default.
served = 0


def read_body(request: IncomingRequest) -> bytes:
    """Reads the whole request body (streams give at most CHUNK bytes per read)."""
    body = request.consume()
    stream = body.stream()
    data = bytearray()
    while True:
        try:
            data += stream.blocking_read(CHUNK)
        except Exception:
            # The stream's end (closed) comes as an error from blocking_read.
            break
    stream.__exit__(None, None, None)
    return bytes(data)


def respond(out: ResponseOutparam, status: int, body: bytes, headers=None) -> None:
    fields = [("content-type", b"text/plain; charset=utf-8")]
    fields += headers or []
    response = OutgoingResponse(Fields.from_list(fields))
    response.set_status_code(status)
    outgoing = response.body()
    ResponseOutparam.set(out, Ok(response))
    stream = outgoing.write()
    for i in range(0, len(body), CHUNK):
        stream.blocking_write_and_flush(body[i : i + CHUNK])
    stream.__exit__(None, None, None)
    OutgoingBody.finish(outgoing, None)



class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        global served
        served += 1
        method = request.method()
        path_with_query = request.path_with_query() or "/"
        path, _, query = path_with_query.partition("?")
        if isinstance(method, Method_Get) and path == "/":
            greeting = os.environ.get("GREETING", "Hello")
            respond(response_out, 200, f"{greeting} from Python on WebAssembly\n".encode())
        elif isinstance(method, Method_Get) and path == "/env":
            name = parse_qs(query).get("name", [""])[0]
            value = os.environ.get(name)
            if value is None:
                respond(response_out, 404, f"{name} is not set\n".encode())
            else:
                respond(response_out, 200, value.encode())
        elif isinstance(method, Method_Get) and path == "/count":
            respond(response_out, 200, str(served).encode())
        elif isinstance(method, Method_Post) and path == "/echo":
            body = read_body(request)
            respond(response_out, 200, body, [("x-echo-length", str(len(body)).encode())])
        else:
            respond(response_out, 404, f"no route for {path}\n".encode())
