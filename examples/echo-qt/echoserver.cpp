#include "echoserver.h"

#include <QHostAddress>
#include <QTimer>
#include <QWebSocket>
#include <QWebSocketServer>

#include <cstdio>

EchoServer::EchoServer(QObject *parent)
    : QObject(parent),
      m_server(new QWebSocketServer(QStringLiteral("mini-MAR Echoserver"),
                                    QWebSocketServer::NonSecureMode, this)),
      m_pingTimer(new QTimer(this))
{
    connect(m_server, &QWebSocketServer::newConnection,
            this, &EchoServer::onNewConnection);
    connect(m_pingTimer, &QTimer::timeout, this, &EchoServer::pingClients);
    m_pingTimer->setInterval(PingIntervalMs);
}

EchoServer::~EchoServer()
{
    m_server->close();
    qDeleteAll(m_clients);
}

bool EchoServer::listen(quint16 port)
{
    if (!m_server->listen(QHostAddress::Any, port))
        return false;
    m_pingTimer->start();
    return true;
}

QString EchoServer::errorString() const
{
    return m_server->errorString();
}

quint16 EchoServer::serverPort() const
{
    return m_server->serverPort();
}

void EchoServer::onNewConnection()
{
    while (QWebSocket *socket = m_server->nextPendingConnection()) {
        connect(socket, &QWebSocket::textMessageReceived,
                this, &EchoServer::processTextMessage);
        connect(socket, &QWebSocket::binaryMessageReceived,
                this, &EchoServer::processBinaryMessage);
        connect(socket, &QWebSocket::disconnected,
                this, &EchoServer::socketDisconnected);
        m_clients << socket;
        std::printf("Client connected: %s (%d open)\n",
                    qPrintable(socket->peerAddress().toString()),
                    int(m_clients.size()));
        std::fflush(stdout);
    }
}

void EchoServer::processTextMessage(const QString &message)
{
    if (auto *client = qobject_cast<QWebSocket *>(sender()))
        client->sendTextMessage(message);
}

void EchoServer::processBinaryMessage(const QByteArray &message)
{
    if (auto *client = qobject_cast<QWebSocket *>(sender()))
        client->sendBinaryMessage(message);
}

void EchoServer::socketDisconnected()
{
    if (auto *client = qobject_cast<QWebSocket *>(sender())) {
        m_clients.removeAll(client);
        client->deleteLater();
        std::printf("Client disconnected (%d open)\n", int(m_clients.size()));
        std::fflush(stdout);
    }
}

void EchoServer::pingClients()
{
    for (QWebSocket *client : qAsConst(m_clients))
        client->ping();
}
