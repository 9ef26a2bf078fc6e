// mini-MAR example: the Qt side of the talk's WebChannel chat. Publishes a `core` object
// over QWebChannel to the pages of the relay hosted on mini-MAR (examples/webchannel-chat),
// which it reaches as a WebSocket client, so it may run anywhere, behind any NAT.
//
//   chat ws://CHAT-APP.DOMAIN/publish
//
// What a page sends with core.receiveText(text) is printed here ("Qt got: …") and answered
// through core.sendText. Reconnects when the relay goes away.

#include "chat.h"

#include <QCoreApplication>
#include <QHash>
#include <QTimer>
#include <QUrl>
#include <QWebChannel>

int main(int argc, char *argv[])
{
    QCoreApplication app(argc, argv);
    if (argc < 2) {
        std::fprintf(stderr, "usage: chat ws://RELAY/publish\n");
        return 2;
    }
    const QUrl url(QString::fromLocal8Bit(argv[1]));
    QWebChannel channel;
    Core core;
    channel.registerObject(QStringLiteral("core"), &core);

    QWebSocket relay;
    QHash<int, RelayTransport *> pages;
    QObject::connect(&relay, &QWebSocket::connected, [&] {
        std::printf("connected to the relay\n");
        std::fflush(stdout);
    });
    QObject::connect(&relay, &QWebSocket::textMessageReceived, [&](const QString &text) {
        const QJsonObject o = QJsonDocument::fromJson(text.toUtf8()).object();
        const int client = o.value(QStringLiteral("client")).toInt();
        const QString event = o.value(QStringLiteral("event")).toString();
        if (event == QLatin1String("open")) {
            auto *t = new RelayTransport(&relay, client, &relay);
            pages.insert(client, t);
            channel.connectTo(t);
        } else if (event == QLatin1String("close")) {
            if (RelayTransport *t = pages.take(client)) {
                channel.disconnectFrom(t);
                t->deleteLater();
            }
        } else if (RelayTransport *t = pages.value(client)) {
            t->deliver(o.value(QStringLiteral("message")).toString());
        }
    });
    QObject::connect(&relay, &QWebSocket::disconnected, [&] {
        for (RelayTransport *t : qAsConst(pages)) {
            channel.disconnectFrom(t);
            t->deleteLater();
        }
        pages.clear();
        QTimer::singleShot(1000, &relay, [&] { relay.open(url); });
    });
    relay.open(url);
    return app.exec();
}
