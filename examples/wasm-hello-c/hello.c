/* A WAGI handler in C: a WASI preview1 command that gets the request as CGI/1.1 environment
 * variables and its body on stdin, and answers with a CGI response on stdout.
 *
 * mini-MAR's wasm buildpack compiles it with clang for wasm32-wasi on `git push` and serves it
 * in-process, a fresh instance per request.
 *
 *   GET /            a greeting that uses the GREETING config var
 *   GET /cgi         the CGI variables it was given, one NAME=value per line
 *   POST /echo       the request body back (CONTENT_LENGTH bytes from stdin)
 *   GET /go          a redirect to / (Status: 302 and Location)
 *   anything else    404
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *env_or(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v ? v : fallback;
}

int main(void) {
    const char *method = env_or("REQUEST_METHOD", "");
    const char *path = env_or("PATH_INFO", "/");

    if (strcmp(method, "GET") == 0 && strcmp(path, "/") == 0) {
        printf("Content-Type: text/plain; charset=utf-8\n\n");
        printf("%s from C on WebAssembly\n", env_or("GREETING", "Hello"));
        return 0;
    }
    if (strcmp(method, "GET") == 0 && strcmp(path, "/cgi") == 0) {
        static const char *names[] = {
            "REQUEST_METHOD", "PATH_INFO", "SCRIPT_NAME", "QUERY_STRING", "CONTENT_TYPE",
            "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR",
            "X_MATCHED_ROUTE", "X_FULL_URL", "HTTP_X_TEST", "GATEWAY_INTERFACE",
        };
        printf("Content-Type: text/plain\n\n");
        for (size_t i = 0; i < sizeof names / sizeof *names; i++)
            printf("%s=%s\n", names[i], env_or(names[i], ""));
        return 0;
    }
    if (strcmp(method, "POST") == 0 && strcmp(path, "/echo") == 0) {
        long want = atol(env_or("CONTENT_LENGTH", "0"));
        char *buf = malloc(want > 0 ? (size_t)want : 1);
        if (!buf) {
            printf("Status: 500 Internal Server Error\n\nout of memory\n");
            return 0;
        }
        size_t got = fread(buf, 1, want > 0 ? (size_t)want : 0, stdin);
        printf("Content-Type: application/octet-stream\nX-Echo-Length: %zu\n\n", got);
        fwrite(buf, 1, got, stdout);
        free(buf);
        return 0;
    }
    if (strcmp(path, "/go") == 0) {
        printf("Status: 302 Found\nLocation: /\n\n");
        return 0;
    }
    fprintf(stderr, "no route for %s %s\n", method, path);
    printf("Status: 404 Not Found\nContent-Type: text/plain\n\nno route for %s\n", path);
    return 0;
}
