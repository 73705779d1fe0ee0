'use strict';
// Local emulator of Twilio's Conversations WebSocket side: twilsock v3 at /v3/wsconnect,
// the Sync subset and the Conversations upstream calls the JS SDK makes, plus a test-control
// API under /_emulator/. See README.md.
//
//   PORT=0 node server.js   ->  prints {"ready":true,"port":N} once listening
//
// stdout carries that one line only; EMULATOR_DEBUG=1 logs to stderr.

const http = require('node:http');
const { WebSocketServer } = require('ws');
const { SyncStore } = require('./lib/sync');
const { ConversationsService } = require('./lib/conversations');
const { TwilsockServer } = require('./lib/twilsock');
const { makeHarness } = require('./lib/harness');

function intEnv(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) {
    process.stderr.write(`${name} must be a non-negative integer\n`);
    process.exit(2);
  }
  return n;
}

const config = {
  accountSid: process.env.EMULATOR_ACCOUNT_SID || 'AC00000000000000000000000000000000',
  apiKeySid: process.env.EMULATOR_API_KEY_SID || 'SK00000000000000000000000000000000',
  apiKeySecret: process.env.EMULATOR_API_KEY_SECRET || 'emulator-api-key-secret',
  chatServiceSid: process.env.EMULATOR_CHAT_SERVICE_SID || 'IS00000000000000000000000000000000',
  participantLimit: intEnv('EMULATOR_PARTICIPANT_LIMIT', 1000),
  tokenWarningSeconds: intEnv('EMULATOR_TOKEN_WARNING_SECONDS', 180),
};
const hosts = { aim: 'aim.us1.twilio.com', cds: 'cds.us1.twilio.com', mcs: 'mcs.us1.twilio.com' };
const debug = process.env.EMULATOR_DEBUG === '1';
const log = debug ? (...a) => process.stderr.write(`[emulator] ${a.join(' ')}\n`) : () => {};

const store = new SyncStore(`https://${hosts.cds}`);
let twilsock;
const conversations = new ConversationsService({
  store,
  config,
  hosts,
  notifyIdentity: (identity, type, payload) => twilsock.notifyIdentity(identity, type, payload),
});
twilsock = new TwilsockServer({ config, store, conversations, log });
const harness = makeHarness({ conversations, twilsock, store });

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname.startsWith('/_emulator/')) {
    harness(req, res, url.pathname.slice('/_emulator'.length));
    return;
  }
  res.writeHead(404, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ error: 'not found' }));
});

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://localhost');
  const reject = (status, text) => {
    socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  };
  if (url.pathname !== '/v3/wsconnect') return reject(404, 'Not Found');
  if (twilsock.refusing) {
    log('refusing websocket upgrade');
    return reject(503, 'Service Unavailable');
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    log('websocket connected');
    twilsock.accept(ws);
  });
});

server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, port: server.address().port })}\n`);
});
