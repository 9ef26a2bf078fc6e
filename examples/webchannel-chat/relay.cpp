// mini-MAR example: the relay of the talk's WebChannel chat. A Qt program publishes a
// QObject over QWebChannel, and browser pages use it with qwebchannel.js, as in Qt's
// standalone WebChannel example, except that the Qt program is not reachable from the pages:
// both connect out to this relay, hosted on mini-MAR.
//
// On $PORT: GET / is the chat page, GET /qwebchannel.js is the script Qt ships inside its
// WebChannel library; WebSocket /ws is a page, WebSocket /publish the Qt program (one at a
// time). Each page gets a number; the relay wraps what a page sends as
// {"client":N,"message":TEXT} for the Qt program, which keeps one WebChannel transport per
// page and answers {"client":N,"message":TEXT}; it announces pages with
// {"client":N,"event":"open"|"close"}. Everyone is pinged every 45 s (the 60 s idle rule).

#include "relay.h"

#include <QCoreApplication>
#include <QFile>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTcpServer>
#include <QTcpSocket>
#include <QTimer>
#include <QWebChannel>
#include <QWebSocket>
#include <QWebSocketServer>

#include <cstdio>

static void say(const QString &line)
{
    std::printf("%s\n", qPrintable(line));
    std::fflush(stdout);
}

Relay::Relay(QObject *parent)
    : QObject(parent),
      m_tcp(new QTcpServer(this)),
      m_ws(new QWebSocketServer(QStringLiteral("webchannel-chat relay"),
                                QWebSocketServer::NonSecureMode, this)),
      m_ping(new QTimer(this))
{
    connect(m_tcp, &QTcpServer::newConnection, this, &Relay::onTcpConnection);
    connect(m_ws, &QWebSocketServer::newConnection, this, &Relay::onWebSocket);
    connect(m_ping, &QTimer::timeout, this, &Relay::ping);
    m_ping->start(45000);
}

bool Relay::listen(quint16 port)
{
    return m_tcp->listen(QHostAddress::Any, port);
}

void Relay::onTcpConnection()
{
    while (QTcpSocket *socket = m_tcp->nextPendingConnection()) {
        connect(socket, &QTcpSocket::readyRead, this, [this, socket] { route(socket); });
        connect(socket, &QTcpSocket::disconnected, socket, &QObject::deleteLater);
    }
}

// Looks at the request head without reading it, so a WebSocket handshake reaches
// QWebSocketServer whole.
void Relay::route(QTcpSocket *socket)
{
    const QByteArray head = socket->peek(8192);
    const int end = head.indexOf("\r\n\r\n");
    if (end < 0) {
        if (head.size() >= 8192)
            socket->abort();
        return;
    }
    // QWebSocketServer takes the socket over, deleting it included.
    socket->disconnect();
    const QByteArray lower = head.left(end).toLower();
    const QByteArray path = head.split(' ').value(1);
    if (lower.contains("\r\nupgrade: websocket")) {
        m_ws->handleConnection(socket);
        return;
    }
    connect(socket, &QTcpSocket::disconnected, socket, &QObject::deleteLater);
    socket->read(end + 4);
    serve(socket, path);
}

void Relay::serve(QTcpSocket *socket, const QByteArray &path)
{
    QString file;
    QByteArray type;
    if (path == "/") {
        file = QStringLiteral(":/page/index.html");
        type = "text/html; charset=utf-8";
    } else if (path == "/qwebchannel.js") {
        // The script Qt ships inside its WebChannel library.
        file = QStringLiteral(":/qtwebchannel/qwebchannel.js");
        type = "text/javascript; charset=utf-8";
    }
    QFile f(file);
    QByteArray status = "200 OK";
    QByteArray body;
    if (file.isEmpty() || !f.open(QIODevice::ReadOnly)) {
        status = "404 Not Found";
        body = "no such page\n";
        type = "text/plain";
    } else {
        body = f.readAll();
    }
    socket->write("HTTP/1.1 " + status + "\r\nContent-Type: " + type + "\r\nContent-Length: "
                  + QByteArray::number(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
    socket->disconnectFromHost();
}

void Relay::onWebSocket()
{
    while (QWebSocket *ws = m_ws->nextPendingConnection()) {
        const QString path = ws->requestUrl().path();
        if (path == QLatin1String("/publish")) {
            if (m_publisher) {
                ws->close(QWebSocketProtocol::CloseCodePolicyViolated,
                          QStringLiteral("a Qt program is connected already"));
                ws->deleteLater();
                continue;
            }
            m_publisher = ws;
            say(QStringLiteral("publisher connected"));
            connect(ws, &QWebSocket::textMessageReceived, this, &Relay::fromPublisher);
            connect(ws, &QWebSocket::disconnected, this, [this, ws] {
                say(QStringLiteral("publisher gone"));
                m_publisher = nullptr;
                ws->deleteLater();
                // The pages' channel is gone with it: they reconnect.
                for (QWebSocket *page : qAsConst(m_pages))
                    page->close(QWebSocketProtocol::CloseCodeGoingAway,
                                QStringLiteral("the Qt program went away"));
            });
            for (auto it = m_pages.cbegin(); it != m_pages.cend(); ++it)
                toPublisher(it.key(), QStringLiteral("open"));
            continue;
        }
        const int client = m_next++;
        m_pages.insert(client, ws);
        say(QStringLiteral("page %1 connected").arg(client));
        connect(ws, &QWebSocket::textMessageReceived, this, [this, client](const QString &m) {
            toPublisher(client, QString(), m);
        });
        connect(ws, &QWebSocket::disconnected, this, [this, client, ws] {
            m_pages.remove(client);
            toPublisher(client, QStringLiteral("close"));
            ws->deleteLater();
        });
        toPublisher(client, QStringLiteral("open"));
    }
}

void Relay::toPublisher(int client, const QString &event, const QString &message)
{
    if (!m_publisher)
        return;
    QJsonObject o{{QStringLiteral("client"), client}};
    if (event.isEmpty())
        o.insert(QStringLiteral("message"), message);
    else
        o.insert(QStringLiteral("event"), event);
    m_publisher->sendTextMessage(QString::fromUtf8(QJsonDocument(o).toJson(QJsonDocument::Compact)));
}

void Relay::fromPublisher(const QString &text)
{
    const QJsonObject o = QJsonDocument::fromJson(text.toUtf8()).object();
    if (QWebSocket *page = m_pages.value(o.value(QStringLiteral("client")).toInt()))
        page->sendTextMessage(o.value(QStringLiteral("message")).toString());
}

void Relay::ping()
{
    if (m_publisher)
        m_publisher->ping();
    for (QWebSocket *page : qAsConst(m_pages))
        page->ping();
}

int main(int argc, char *argv[])
{
    QCoreApplication app(argc, argv);
    // Linking QtWebChannel is what carries qwebchannel.js in; this keeps the link.
    QWebChannel keepLinked;
    const quint16 port = quint16(qEnvironmentVariableIntValue("PORT"));
    Relay relay;
    if (!relay.listen(port ? port : 5000)) {
        std::fprintf(stderr, "relay: cannot listen on %u\n", unsigned(port));
        return 1;
    }
    say(QStringLiteral("relay listening on %1").arg(port));
    return app.exec();
}
