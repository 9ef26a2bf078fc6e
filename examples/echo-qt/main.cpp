// mini-MAR example: a Qt WebSocket echo server.
// Listens on $PORT (default 1234) on all interfaces; see echoserver.h.

#include "echoserver.h"

#include <QCoreApplication>

#include <cstdio>

int main(int argc, char *argv[])
{
    QCoreApplication app(argc, argv);

    quint16 port = 1234;
    const QByteArray portEnv = qgetenv("PORT");
    if (!portEnv.isEmpty()) {
        bool ok = false;
        const uint value = portEnv.toUInt(&ok);
        if (!ok || value == 0 || value > 65535) {
            std::fprintf(stderr, "Invalid PORT: %s\n", portEnv.constData());
            return 1;
        }
        port = quint16(value);
    }

    EchoServer server;
    if (!server.listen(port)) {
        std::fprintf(stderr, "Echoserver cannot listen on port %u: %s\n",
                     unsigned(port), qPrintable(server.errorString()));
        return 1;
    }

    std::printf("Echoserver listening on port %u\n", unsigned(server.serverPort()));
    std::fflush(stdout);

    return app.exec();
}
