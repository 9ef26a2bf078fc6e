// The eds-crud benchmark's reference: Parse Server (the version pinned in package.json and
// package-lock.json) on a private PostgreSQL cluster the bench starts. The bench copies this
// file into the install folder (beside node_modules) and runs it there:
//
//   node server.js --port PORT --database postgres://postgres@127.0.0.1:PGPORT/parse \
//       --app-id ID --master-key KEY --logs DIR
//
// Parse Server's defaults are kept (logs at `info` in files, no verbose request logging, the
// schema cache, the PostgreSQL adapter's own pool); only what a deployment must say is set.
// It prints `parse listening on 127.0.0.1:PORT` once it serves.

'use strict';

const { ParseServer } = require('parse-server');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < process.argv.length) {
    return process.argv[i + 1];
  }
  if (fallback === undefined) {
    console.error(`server.js: --${name} is required`);
    process.exit(64);
  }
  return fallback;
}

async function main() {
  const port = Number(arg('port'));
  const host = '127.0.0.1';
  await ParseServer.startApp({
    appId: arg('app-id'),
    masterKey: arg('master-key'),
    databaseURI: arg('database'),
    serverURL: `http://${host}:${port}/parse`,
    mountPath: '/parse',
    port,
    host,
    logsFolder: arg('logs'),
  });
  console.log(`parse listening on ${host}:${port}`);
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});
