// mini-MAR example: a Qt WebSocket client of the echo server, as the talk's demo had one.
//
//   echoclient URL [IDLE_SECONDS]
//
// Connects, sends "hello from Qt" and prints the echo; then stays idle for IDLE_SECONDS
// (default 0), answering the server's pings as QWebSocket does, and sends again: the echo
// proves the connection outlived the platform's 60 s idle rule. Prints one line per event;
// exits 0 when both echoes came back, 1 otherwise.

#include <QCoreApplication>
#include <QTimer>
#include <QUrl>
#include <QWebSocket>

#include <cstdio>

int main(int argc, char *argv[])
{
    QCoreApplication app(argc, argv);
    if (argc < 2) {
        std::fprintf(stderr, "usage: echoclient URL [IDLE_SECONDS]\n");
        return 2;
    }
    const QUrl url(QString::fromLocal8Bit(argv[1]));
    const int idle = argc > 2 ? QString::fromLocal8Bit(argv[2]).toInt() : 0;
    auto say = [](const QString &line) {
        std::printf("%s\n", qPrintable(line));
        std::fflush(stdout);
    };

    QWebSocket socket;
    int echoes = 0;
    QObject::connect(&socket, &QWebSocket::connected, [&] {
        say(QStringLiteral("connected"));
        socket.sendTextMessage(QStringLiteral("hello from Qt"));
    });
    QObject::connect(&socket, &QWebSocket::textMessageReceived, [&](const QString &m) {
        say(QStringLiteral("echo: ") + m);
        if (++echoes == 1) {
            QTimer::singleShot(idle * 1000, &socket, [&, idle] {
                socket.sendTextMessage(QStringLiteral("still here after %1 s").arg(idle));
            });
        } else {
            socket.close();
        }
    });
    QObject::connect(&socket, &QWebSocket::disconnected, [&] {
        say(QStringLiteral("disconnected: %1 %2").arg(socket.closeCode()).arg(socket.closeReason()));
        app.exit(echoes == 2 ? 0 : 1);
    });
    QObject::connect(&socket, QOverload<QAbstractSocket::SocketError>::of(&QWebSocket::error), [&] {
        say(QStringLiteral("error: ") + socket.errorString());
    });
    // A bound on the whole run, so a lost echo fails instead of hanging.
    QTimer::singleShot((idle + 30) * 1000, &app, [&] {
        say(QStringLiteral("timeout"));
        app.exit(1);
    });
    socket.open(url);
    return app.exec();
}
