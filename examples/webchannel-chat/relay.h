// mini-MAR example: the relay of the WebChannel chat (see relay.cpp).
#pragma once

#include <QHash>
#include <QObject>

class QTcpServer;
class QTcpSocket;
class QTimer;
class QWebSocket;
class QWebSocketServer;

class Relay : public QObject
{
    Q_OBJECT
public:
    explicit Relay(QObject *parent = nullptr);
    bool listen(quint16 port);

private:
    void onTcpConnection();
    void route(QTcpSocket *socket);
    void serve(QTcpSocket *socket, const QByteArray &path);
    void onWebSocket();
    void fromPublisher(const QString &text);
    void toPublisher(int client, const QString &what, const QString &message = QString());
    void ping();

    QTcpServer *m_tcp;
    QWebSocketServer *m_ws;
    QTimer *m_ping;
    QWebSocket *m_publisher = nullptr;
    QHash<int, QWebSocket *> m_pages;
    int m_next = 1;
};
