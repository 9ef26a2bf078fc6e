// mini-MAR example: the Qt side of the WebChannel chat (see main.cpp).
#pragma once

#include <QJsonDocument>
#include <QJsonObject>
#include <QObject>
#include <QWebChannelAbstractTransport>
#include <QWebSocket>

#include <cstdio>

// The object the pages use: they call receiveText, and hear sendText.
class Core : public QObject
{
    Q_OBJECT
public:
    using QObject::QObject;

signals:
    void sendText(const QString &text);

public slots:
    void receiveText(const QString &text)
    {
        std::printf("Qt got: %s\n", qPrintable(text));
        std::fflush(stdout);
        emit sendText(QStringLiteral("Qt says: got \"%1\"").arg(text));
    }
};

// One page's WebChannel transport, through the relay's socket: what the channel sends is
// wrapped with the page's number.
class RelayTransport : public QWebChannelAbstractTransport
{
    Q_OBJECT
public:
    RelayTransport(QWebSocket *relay, int client, QObject *parent = nullptr)
        : QWebChannelAbstractTransport(parent), m_relay(relay), m_client(client)
    {
    }

    void sendMessage(const QJsonObject &message) override
    {
        const QString text = QString::fromUtf8(QJsonDocument(message).toJson(QJsonDocument::Compact));
        const QJsonObject envelope{{QStringLiteral("client"), m_client},
                                   {QStringLiteral("message"), text}};
        m_relay->sendTextMessage(
            QString::fromUtf8(QJsonDocument(envelope).toJson(QJsonDocument::Compact)));
    }

    void deliver(const QString &text)
    {
        const QJsonDocument doc = QJsonDocument::fromJson(text.toUtf8());
        if (doc.isObject())
            emit messageReceived(doc.object(), this);
    }

private:
    QWebSocket *m_relay;
    int m_client;
};
