// mini-MAR example: an express app (see Procfile and package.json).
'use strict';

const express = require('express');

const app = express();
const port = Number(process.env.PORT || 5000);

app.get('/', (req, res) => {
  let body = 'Hello from mini-MAR (Node.js)\n';
  if (process.env.GREETING) body += process.env.GREETING + '\n';
  res.type('text/plain').send(body);
});

app.get('/env/:name', (req, res) => {
  const value = process.env[req.params.name];
  if (value === undefined) {
    res.status(404).type('text/plain').send(`${req.params.name} is not set\n`);
  } else {
    res.type('text/plain').send(value);
  }
});

// Stream the request body back as it arrives (no body parser on purpose).
app.all('/echo', (req, res) => {
  res.status(200);
  res.set('Content-Type', req.get('Content-Type') || 'application/octet-stream');
  if (req.get('Content-Length') !== undefined) res.set('Content-Length', req.get('Content-Length'));
  req.pipe(res);
});

const server = app.listen(port, '0.0.0.0', () => {
  console.log(`node-hello listening on 0.0.0.0:${port}`);
});

// Stop accepting connections and exit when the platform stops the dyno.
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 5000).unref();
});
