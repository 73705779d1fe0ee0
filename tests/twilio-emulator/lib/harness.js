'use strict';
// The test-control API under /_emulator/: JSON over HTTP on the emulator's port.
//
// Tests use it to set up conversations and participants, inject inbound messages (as
// Twilio would on an SMS arriving), read what a client posted, and inject failures: token
// expiry, dropped or refused sockets, upstream 429s. Nothing here exists at Twilio.

const { TwilioError } = require('./ids');

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8').trim();
      if (!text) return resolve({});
      try {
        const v = JSON.parse(text);
        if (v === null || typeof v !== 'object' || Array.isArray(v)) return reject(new HttpError(400, 'body must be a JSON object'));
        return resolve(v);
      } catch {
        return reject(new HttpError(400, 'body is not JSON'));
      }
    });
    req.on('error', reject);
  });
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function participantView(p) {
  return {
    sid: p.sid,
    identity: p.identity,
    address: p.address,
    proxyAddress: p.proxyAddress,
    type: p.type,
    attributes: p.attributes,
    dateCreated: p.dateCreated,
  };
}

function messageView(m) {
  return {
    sid: m.sid,
    index: m.index,
    author: m.author,
    body: m.body,
    attributes: m.attributes,
    dateCreated: m.dateCreated,
    participantSid: m.participantSid,
    media: m.media,
  };
}

function makeHarness({ conversations, twilsock, store }) {
  const routes = [
    ['POST', /^\/conversations$/, async (req) => {
      const b = await readJson(req);
      const conv = conversations.createConversation({
        friendlyName: b.friendlyName ?? null,
        uniqueName: b.uniqueName ?? null,
        attributes: b.attributes ?? {},
      });
      return [201, { sid: conv.sid }];
    }],
    ['GET', /^\/conversations\/([^/]+)$/, async (req, [sid]) => {
      const conv = conversations.get(sid);
      return [200, {
        sid: conv.sid,
        friendlyName: conv.friendlyName,
        uniqueName: conv.uniqueName,
        attributes: conv.attributes,
        participants: [...conv.participants.values()].map(participantView),
        messageCount: conv.messages.length,
      }];
    }],
    ['POST', /^\/conversations\/([^/]+)\/participants$/, async (req, [sid]) => {
      const b = await readJson(req);
      const conv = conversations.get(sid);
      if (!b.identity && !b.address) throw new HttpError(400, 'identity or address is required');
      const p = conversations.addParticipant(conv, b.identity
        ? { identity: b.identity, attributes: b.attributes }
        : { address: b.address, proxyAddress: b.proxyAddress ?? null, attributes: b.attributes });
      return [201, { sid: p.sid }];
    }],
    ['POST', /^\/conversations\/([^/]+)\/state$/, async (req, [sid]) => {
      const b = await readJson(req);
      if (typeof b.state !== 'string') throw new HttpError(400, 'state is required');
      if (b.dateUpdated !== undefined && Number.isNaN(Date.parse(b.dateUpdated))) {
        throw new HttpError(400, 'dateUpdated must be an ISO 8601 date');
      }
      const conv = conversations.get(sid);
      conversations.setState(conv, b.state, b.dateUpdated);
      return [200, { sid: conv.sid, state: conv.state }];
    }],
    ['POST', /^\/conversations\/([^/]+)\/invite$/, async (req, [sid]) => {
      const b = await readJson(req);
      if (!b.identity) throw new HttpError(400, 'identity is required');
      conversations.invite(conversations.get(sid), b.identity);
      return [200, { sid, identity: b.identity, status: 'notParticipating' }];
    }],
    ['POST', /^\/conversations\/([^/]+)\/messages$/, async (req, [sid]) => {
      const b = await readJson(req);
      const conv = conversations.get(sid);
      const m = conversations.addMessage(conv, {
        author: b.author,
        body: b.body ?? null,
        attributes: b.attributes,
        media: b.media ?? null,
      });
      return [201, { sid: m.sid, index: m.index }];
    }],
    ['GET', /^\/conversations\/([^/]+)\/messages$/, async (req, [sid]) => {
      const conv = conversations.get(sid);
      return [200, { messages: conv.messages.map(messageView) }];
    }],
    ['POST', /^\/tokens\/about-to-expire$/, async () => [200, { sessions: twilsock.aboutToExpireAll() }]],
    ['POST', /^\/tokens\/expire$/, async () => [200, { sessions: twilsock.expireAll() }]],
    ['POST', /^\/sockets\/drop$/, async (req) => {
      const b = await readJson(req);
      const mode = b.mode || 'terminate';
      if (mode !== 'terminate' && mode !== 'close') throw new HttpError(400, 'mode must be terminate or close');
      return [200, { dropped: twilsock.dropAll(mode) }];
    }],
    ['POST', /^\/sockets\/refuse$/, async (req) => {
      const b = await readJson(req);
      if (typeof b.on !== 'boolean') throw new HttpError(400, 'on must be true or false');
      twilsock.refusing = b.on;
      return [200, { refusing: twilsock.refusing }];
    }],
    ['POST', /^\/faults$/, async (req) => {
      const b = await readJson(req);
      if (b.match !== undefined && typeof b.match !== 'string') throw new HttpError(400, 'match must be a string');
      const kinds = [['upstream429', '429'], ['lostReplies', 'lostReply']].filter(([field]) => b[field] !== undefined);
      if (kinds.length !== 1) throw new HttpError(400, 'give one of upstream429 or lostReplies');
      const [[field, kind]] = kinds;
      const n = b[field];
      if (!Number.isInteger(n) || n < 0) throw new HttpError(400, `${field} must be a non-negative integer`);
      twilsock.addFault(n, b.match, kind);
      return [200, { pendingFaults: twilsock.state().pendingFaults }];
    }],
    ['GET', /^\/state$/, async () => [200, { ...twilsock.state(), conversations: conversations.conversations.size }]],
    ['POST', /^\/reset$/, async () => {
      twilsock.reset();
      conversations.reset();
      store.reset();
      return [200, { reset: true }];
    }],
  ];

  return async function handle(req, res, path) {
    try {
      for (const [method, re, fn] of routes) {
        const m = re.exec(path);
        if (!m) continue;
        if (req.method !== method) continue;
        const [status, body] = await fn(req, m.slice(1).map(decodeURIComponent));
        return send(res, status, body);
      }
      return send(res, 404, { error: `no harness route ${req.method} ${path}` });
    } catch (e) {
      if (e instanceof TwilioError) return send(res, e.status, e.body());
      if (e instanceof HttpError) return send(res, e.status, { error: e.message });
      return send(res, 500, { error: String(e && e.message) });
    }
  };
}

module.exports = { makeHarness };
