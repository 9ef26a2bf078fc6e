#ifndef ECHOSERVER_H
#define ECHOSERVER_H

#include <QByteArray>
#include <QList>
#include <QObject>
#include <QString>

class QTimer;
class QWebSocket;
class QWebSocketServer;

// Echoes every text and binary WebSocket message back to its sender.
// Pings all clients periodically so that idle connections stay open behind
// the mini-MAR router, which closes WebSockets idle for 60 seconds.
class EchoServer : public QObject
{
    Q_OBJECT

public:
    static constexpr int PingIntervalMs = 50 * 1000;

    explicit EchoServer(QObject *parent = nullptr);
    ~EchoServer() override;

    bool listen(quint16 port);
    QString errorString() const;
    quint16 serverPort() const;

private slots:
    void onNewConnection();
    void processTextMessage(const QString &message);
    void processBinaryMessage(const QByteArray &message);
    void socketDisconnected();
    void pingClients();

private:
    QWebSocketServer *m_server;
    QTimer *m_pingTimer;
    QList<QWebSocket *> m_clients;
};

#endif // ECHOSERVER_H
