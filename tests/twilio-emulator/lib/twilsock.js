'use strict';
// The twilsock v3 endpoint: one Connection per WebSocket, plus the session records that
// outlive a connection (found again through the continuation token on re-init).
//
// Per connection: `init` (token check, continuation token), `update` (new token), upstream
// `message` requests routed to the aim/cds handlers, and server pushes (notifications,
// client_update, close). Token expiry is scheduled from the JWT `exp`, as the SDK keeps no
// timer of its own.

const crypto = require('node:crypto');
const framing = require('./framing');
const { verifyAccessToken, TokenError } = require('./jwt');
const { handleCds } = require('./cds');
const { TwilioError, reason } = require('./ids');

const SUPPORTED_CAPABILITIES = ['client_update', 'telemetry.v1'];

function messageId() {
  return 'TM' + crypto.randomBytes(16).toString('hex');
}

function tokenKey(token) {
  return crypto.createHash('sha256').update(String(token)).digest('hex');
}

function decodeParams(params) {
  const out = {};
  for (const [k, v] of Object.entries(params || {})) {
    const dec = (x) => {
      try {
        return decodeURIComponent(String(x));
      } catch {
        return String(x);
      }
    };
    out[k] = Array.isArray(v) ? v.map(dec) : dec(v);
  }
  return out;
}

// One line per frame for EMULATOR_DEBUG=1: the method and what it is about.
function summarize(h, payload) {
  if (h.method === 'message' && h.http_request) return `message ${h.http_request.method} ${h.http_request.host}${h.http_request.path}`;
  if (h.method === 'notification') {
    const p = payload && typeof payload === 'string' ? JSON.parse(payload) : payload || {};
    return `notification ${h.message_type} ${p.event_type || ''}`;
  }
  if (h.method === 'reply') {
    const http = h.http_status ? ` http ${h.http_status.code}` : '';
    return `reply ${h.status ? h.status.code : ''}${http}${h.continuation_token ? ' (init)' : ''}`;
  }
  if (h.method === 'client_update') return `client_update ${h.client_update_type}`;
  if (h.method === 'close') return h.status ? `close ${h.status.code} ${h.status.status}` : 'close';
  return h.method;
}

class Connection {
  constructor(server, ws) {
    this.server = server;
    this.ws = ws;
    this.identity = null;
    this.token = null;
    this.exp = null;
    this.record = null;
    this.subscriptions = new Map();
    this.timers = [];
    this.held = null;
    this.closed = false;
    ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    ws.on('close', () => this.onClose());
    ws.on('error', () => {});
  }

  log(...args) {
    this.server.log(`[${this.identity || 'anonymous'}]`, ...args);
  }

  send(header, payload) {
    if (this.closed || this.ws.readyState !== this.ws.OPEN) return;
    this.log('->', summarize(header, payload));
    this.ws.send(framing.encode(header, payload), { binary: true });
  }

  // Server pushes queue up while an upstream request is being handled, so the reply to that
  // request always reaches the client before the events it caused.
  push(header, payload) {
    if (this.held) this.held.push([header, payload]);
    else this.send(header, payload);
  }

  notify(messageType, payload) {
    this.push({ method: 'notification', id: messageId(), message_type: messageType, payload_type: 'application/json' }, payload);
  }

  onMessage(data, isBinary) {
    let frame;
    try {
      frame = framing.decode(isBinary ? data : Buffer.from(String(data)));
    } catch (e) {
      this.log('unparseable frame:', e.message);
      this.send({ method: 'close', id: messageId(), status: { code: 406, status: 'Not Acceptable', description: e.message } });
      return;
    }
    const { header, payload, payloadText } = frame;
    this.log('<-', summarize(header, payload));
    switch (header.method) {
      case 'init':
        return this.onInit(header);
      case 'update':
        return this.onUpdate(header);
      case 'message':
        return this.onUpstream(header, payload, payloadText);
      case 'put_notification_ctx':
      case 'delete_notification_ctx':
        return this.send({ method: 'reply', id: header.id, status: { code: 200, status: 'OK' } });
      case 'reply':
      case 'telemetry.v1':
      case 'close':
        return undefined;
      default:
        this.log('unknown method', header.method);
        return this.send({ method: 'reply', id: header.id, status: { code: 400, status: 'Bad Request', description: `unknown method ${header.method}` } });
    }
  }

  checkToken(token) {
    if (this.server.revoked.has(tokenKey(token))) {
      throw new TokenError(20104, 'Access Token expired or expiration date invalid');
    }
    return verifyAccessToken(token, this.server.config);
  }

  onInit(header) {
    this.server.counters.inits += 1;
    let verified;
    try {
      verified = this.checkToken(header.token);
    } catch (e) {
      if (!(e instanceof TokenError)) throw e;
      this.log('init rejected:', e.code, e.message);
      this.send({ method: 'reply', id: header.id, status: { code: 401, status: 'Unauthorized', errorCode: e.code, description: e.message } });
      // The SDK closes the socket itself on a terminal init failure; this is only a backstop.
      setTimeout(() => this.ws.close(1000), 5000).unref();
      return;
    }
    const { record, reissued } = this.server.attachSession(this, verified.identity, header.continuation_token);
    this.identity = verified.identity;
    this.token = header.token;
    this.exp = verified.exp;
    this.record = record;
    record.tokenExpiresAt = verified.exp;
    const requested = Array.isArray(header.capabilities) ? header.capabilities : [];
    this.send({
      method: 'reply',
      id: header.id,
      status: { code: 200, status: 'OK' },
      continuation_token: record.continuationToken,
      continuation_token_status: { reissued, reissue_reason: reissued ? 'unknown continuation token' : null },
      capabilities: requested.filter((c) => SUPPORTED_CAPABILITIES.includes(c)),
    });
    this.scheduleTokenTimers();
    this.log('init ok, continuation token', record.continuationToken);
  }

  onUpdate(header) {
    if (!this.identity) {
      this.send({ method: 'reply', id: header.id, status: { code: 400, status: 'Bad Request', description: 'update before init' } });
      return;
    }
    let verified;
    try {
      verified = this.checkToken(header.token);
      if (verified.identity !== this.identity) {
        throw new TokenError(20106, 'Invalid Access Token grants: identity differs from the session');
      }
    } catch (e) {
      if (!(e instanceof TokenError)) throw e;
      this.send({ method: 'reply', id: header.id, status: { code: 401, status: 'Unauthorized', errorCode: e.code, description: e.message } });
      return;
    }
    this.server.counters.tokenUpdates += 1;
    this.token = header.token;
    this.exp = verified.exp;
    this.record.tokenExpiresAt = verified.exp;
    this.send({ method: 'reply', id: header.id, status: { code: 200, status: 'OK' } });
    this.scheduleTokenTimers();
  }

  scheduleTokenTimers() {
    this.clearTimers();
    const now = Date.now();
    const expMs = this.exp * 1000;
    const warnMs = expMs - this.server.config.tokenWarningSeconds * 1000;
    this.timers.push(setTimeout(() => this.aboutToExpire(), Math.max(0, warnMs - now)));
    this.timers.push(setTimeout(() => this.expire(), Math.max(0, expMs - now)));
  }

  clearTimers() {
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
  }

  aboutToExpire() {
    this.push({ method: 'client_update', id: messageId(), client_update_type: 'token_about_to_expire' });
  }

  // Close 410 = token expired. The SDK then disconnects on its own (about 3 s later); the
  // server-side close is only a backstop for a client that does not.
  expire() {
    this.clearTimers();
    if (this.token) this.server.revoked.add(tokenKey(this.token));
    this.push({ method: 'close', id: messageId(), status: { code: 410, status: 'Token expired' } });
    setTimeout(() => this.ws.close(1000), 10000).unref();
  }

  onUpstream(header, payload, payloadText) {
    if (!this.identity) {
      this.send({ method: 'reply', id: header.id, status: { code: 401, status: 'Unauthorized', description: 'not initialised' } });
      return;
    }
    const r = header.http_request || {};
    const req = {
      method: String(r.method || 'GET').toUpperCase(),
      host: String(r.host || ''),
      path: String(r.path || '/'),
      params: decodeParams(r.params),
      headers: r.headers || {},
      body: typeof payload === 'string' ? payload : payload === undefined ? payloadText : payload,
    };
    const key = `${req.method} ${req.host}${req.path}`;
    const upstream = this.server.counters.upstream;
    upstream[key] = (upstream[key] || 0) + 1;
    this.log('upstream', key, 'params', JSON.stringify(req.params), 'headers', JSON.stringify(req.headers),
      'body', typeof req.body === 'string' ? req.body : JSON.stringify(req.body));

    let result;
    this.held = [];
    const fault = this.server.takeFault(key);
    try {
      if (fault && fault.kind === '429') {
        result = fault.reply;
      } else if (req.host.startsWith('aim.')) {
        result = this.server.conversations.handleAim(this.identity, req);
      } else if (req.host.startsWith('cds.')) {
        result = handleCds(this.server.store, this, req);
      } else {
        throw new TwilioError(404, 20404, `Unknown upstream host ${req.host}`);
      }
    } catch (e) {
      if (e instanceof TwilioError) {
        result = { status: e.status, body: e.body() };
      } else {
        this.server.log('handler error', e && e.stack);
        result = { status: 500, body: { status: 500, code: 20500, message: 'Internal Server Error' } };
      }
    }
    const held = this.held;
    this.held = null;
    if (fault && fault.kind === 'lostReply') {
      // Carried out, but the client never hears back: the socket goes before the reply.
      // The events it caused stay in the Sync log and are replayed on re-subscription.
      this.log('lost reply for', key);
      this.ws.terminate();
      return;
    }
    const replyHeader = {
      method: 'reply',
      id: header.id,
      status: { code: 200, status: 'OK' },
      http_status: { code: result.status, status: reason(result.status) },
      http_headers: { 'Content-Type': 'application/json', ...(result.headers || {}) },
    };
    if (result.body !== undefined) replyHeader.payload_type = 'application/json';
    this.send(replyHeader, result.body === undefined ? undefined : JSON.stringify(result.body));
    for (const [h, p] of held) this.send(h, p);
  }

  onClose() {
    this.closed = true;
    this.clearTimers();
    this.server.detach(this);
    this.log('socket closed');
  }
}

class TwilsockServer {
  constructor({ config, store, conversations, log }) {
    this.config = config;
    this.store = store;
    this.conversations = conversations;
    this.log = log;
    this.connections = new Set();
    this.refusing = false;
    this.reset();
    // Live Sync events go to every connection subscribed to the object.
    store.onEvent((obj, { eventType, event }) => {
      for (const conn of this.connections) {
        if (conn.subscriptions.has(obj.sid)) {
          conn.notify(`com.twilio.rtd.cds.${obj.type}`, { event_type: eventType, event });
        }
      }
    });
  }

  reset() {
    for (const conn of this.connections) conn.ws.terminate();
    this.connections.clear();
    this.sessions = new Map();
    this.revoked = new Set();
    this.faults = [];
    this.counters = { inits: 0, tokenUpdates: 0, upstream: {} };
    this.refusing = false;
  }

  accept(ws) {
    const conn = new Connection(this, ws);
    this.connections.add(conn);
    return conn;
  }

  // Reuses the session a known continuation token names (same identity); anything else starts
  // a new session and reports the token as reissued.
  attachSession(conn, identity, continuationToken) {
    let record = continuationToken ? this.sessions.get(continuationToken) : null;
    let reissued = !!continuationToken;
    if (record && record.identity === identity) {
      reissued = false;
    } else {
      record = {
        identity,
        continuationToken: 'CT' + crypto.randomBytes(20).toString('base64url'),
        connection: null,
        tokenExpiresAt: null,
      };
      this.sessions.set(record.continuationToken, record);
    }
    if (record.connection && record.connection !== conn) record.connection.ws.terminate();
    record.connection = conn;
    return { record, reissued };
  }

  detach(conn) {
    this.connections.delete(conn);
    if (conn.record && conn.record.connection === conn) conn.record.connection = null;
  }

  live() {
    return [...this.connections].filter((c) => c.identity && !c.closed);
  }

  notifyIdentity(identity, type, payload) {
    for (const c of this.live()) if (c.identity === identity) c.notify(type, payload);
  }

  aboutToExpireAll() {
    const live = this.live();
    for (const c of live) c.aboutToExpire();
    return live.length;
  }

  expireAll() {
    const live = this.live();
    for (const c of live) c.expire();
    return live.length;
  }

  dropAll(mode) {
    const all = [...this.connections];
    for (const c of all) {
      if (mode === 'close') c.ws.close(1001, 'going away');
      else c.ws.terminate();
    }
    return all.length;
  }

  // kind '429': answered 429/20429 without being carried out; 'lostReply': carried out, then
  // the socket is terminated instead of replying.
  addFault(count, match, kind = '429') {
    if (count > 0) this.faults.push({ remaining: count, match: match || null, kind });
  }

  // The fault pending for this request, if any: `{kind, reply?}`.
  takeFault(key) {
    const f = this.faults.find((x) => x.remaining > 0 && (!x.match || key.includes(x.match)));
    if (!f) return null;
    f.remaining -= 1;
    this.faults = this.faults.filter((x) => x.remaining > 0);
    if (f.kind === 'lostReply') return { kind: 'lostReply' };
    return {
      kind: '429',
      reply: {
        status: 429,
        headers: { 'Retry-After': '1' },
        body: { status: 429, code: 20429, message: 'Too Many Requests', more_info: 'https://www.twilio.com/docs/errors/20429' },
      },
    };
  }

  state() {
    return {
      sessions: [...this.sessions.values()].map((r) => ({
        identity: r.identity,
        connected: !!r.connection && !r.connection.closed,
        tokenExpiresAt: r.tokenExpiresAt ? new Date(r.tokenExpiresAt * 1000).toISOString() : null,
        continuationToken: r.continuationToken,
        subscriptions: r.connection ? [...r.connection.subscriptions.values()].map((o) => o.uniqueName || o.sid) : [],
      })),
      inits: this.counters.inits,
      tokenUpdates: this.counters.tokenUpdates,
      upstream: { ...this.counters.upstream },
      pendingFaults: this.faults.reduce((n, f) => n + f.remaining, 0),
      refusing: this.refusing,
    };
  }
}

module.exports = { TwilsockServer };
