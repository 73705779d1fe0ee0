// Conformance test: Twilio's own Conversations JS SDK (@twilio/conversations, pinned in
// package.json) drives the emulator. Each case starts a fresh emulator process, mints a token
// with Twilio's helper library and asserts what the SDK itself observes, so the emulator is
// checked against Twilio's client rather than against our reading of the protocol.
//
//   node --test          (from tests/twilio-emulator, after npm ci)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { Client } = require('@twilio/conversations');
const twilio = require('twilio');

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ACCOUNT_SID = 'AC00000000000000000000000000000000';
const API_KEY_SID = 'SK00000000000000000000000000000000';
const API_KEY_SECRET = 'emulator-api-key-secret';
const SERVICE_SID = 'IS00000000000000000000000000000000';
const BOT = 'ingress-bot';
const CUSTOMER = '+15551230001';
const OUR_NUMBER = '+15005550006';
const CASE_TIMEOUT = 90_000;

// ---------------------------------------------------------------------------- helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function startEmulator(t, env = {}) {
  const proc = spawn(process.execPath, [path.join(HERE, 'server.js')], {
    env: { ...process.env, PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      proc.stdout.off('data', onData);
      try {
        const line = JSON.parse(buf.slice(0, nl));
        assert.equal(line.ready, true);
        resolve(line.port);
      } catch (e) {
        reject(new Error(`bad ready line: ${buf}`));
      }
    };
    proc.stdout.on('data', onData);
    proc.once('exit', (code) => reject(new Error(`emulator exited early (${code})`)));
  });
  // Anything after the ready line would break the stdout contract.
  let extraStdout = '';
  proc.stdout.on('data', (d) => { extraStdout += d; });
  const clients = [];
  // Teardown order matters: an SDK shut down (or cut off) while its requests are in flight
  // rejects promises nobody awaits, which node:test reports against the case. So wait for
  // upstream traffic to go quiet, shut the clients down, and only then stop the emulator.
  t.after(async () => {
    await quiesce();
    for (const client of clients.reverse()) await shutdownQuietly(client);
    proc.kill('SIGTERM');
    await new Promise((r) => (proc.exitCode !== null ? r() : proc.once('exit', r)));
    assert.equal(extraStdout, '', 'the emulator printed more than the ready line on stdout');
  });
  const base = `http://127.0.0.1:${port}/_emulator`;
  const call = async (method, p, body) => {
    const res = await fetch(base + p, {
      method,
      headers: body ? { 'Content-Type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: res.status, body: await res.json() };
  };
  const ok = async (method, p, body) => {
    const r = await call(method, p, body);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${p} -> ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  };
  const upstreamTotal = async () => Object.values((await ok('GET', '/state')).upstream).reduce((a, b) => a + b, 0);
  async function quiesce() {
    const deadline = Date.now() + 5000;
    let last = await upstreamTotal();
    while (Date.now() < deadline) {
      await sleep(300);
      const now = await upstreamTotal();
      if (now === last) return;
      last = now;
    }
  }
  return { port, wsUri: `ws://127.0.0.1:${port}/v3/wsconnect`, call, ok, clients };
}

function mintToken({ identity = BOT, ttl = 3600, secret = API_KEY_SECRET, keySid = API_KEY_SID, serviceSid = SERVICE_SID } = {}) {
  const { AccessToken } = twilio.jwt;
  const token = new AccessToken(ACCOUNT_SID, keySid, secret, { identity, ttl });
  token.addGrant(new AccessToken.ChatGrant({ serviceSid }));
  return token.toJwt();
}

function tokenExp(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString()).exp;
}

// Resolves with the event's arguments once `predicate` accepts them.
function waitForEvent(emitter, name, predicate = () => true, timeoutMs = 20_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(name, handler);
      reject(new Error(`timed out waiting for ${name}`));
    }, timeoutMs);
    function handler(...args) {
      if (!predicate(...args)) return;
      clearTimeout(timer);
      emitter.off(name, handler);
      resolve(args.length > 1 ? args : args[0]);
    }
    emitter.on(name, handler);
  });
}

function collect(emitter, name) {
  const seen = [];
  emitter.on(name, (x) => seen.push(x));
  return seen;
}

async function waitUntil(what, fn, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(50);
  }
}

// A client refused at init may never settle shutdown(); don't let it hold the run.
async function shutdownQuietly(client) {
  let timer;
  const cap = new Promise((r) => { timer = setTimeout(r, 5000); });
  await Promise.race([client.shutdown().catch(() => {}), cap]);
  clearTimeout(timer);
}

function newClient(emu, token) {
  const client = new Client(token, { twilsock: { uri: emu.wsUri }, logLevel: 'silent' });
  emu.clients.push(client);
  return client;
}

async function startClient(emu, token = mintToken()) {
  const client = newClient(emu, token);
  await new Promise((resolve, reject) => {
    client.once('initialized', resolve);
    client.once('initFailed', ({ error }) => reject(error || new Error('initFailed')));
  });
  return client;
}

// A conversation the bot is a participant of, with one SMS participant (the customer).
async function smsConversation(emu, { bot = true } = {}) {
  const { sid } = await emu.ok('POST', '/conversations', { friendlyName: `SMS with ${CUSTOMER}` });
  const sms = await emu.ok('POST', `/conversations/${sid}/participants`, { address: CUSTOMER, proxyAddress: OUR_NUMBER });
  const botParticipant = bot ? await emu.ok('POST', `/conversations/${sid}/participants`, { identity: BOT }) : null;
  return { sid, smsParticipantSid: sms.sid, botParticipantSid: botParticipant && botParticipant.sid };
}

async function subscribed(emu, uniqueName) {
  const { sessions } = await emu.ok('GET', '/state');
  return sessions.some((s) => s.connected && s.subscriptions.includes(uniqueName));
}

// Opens the conversation's messages list in the SDK and waits until the emulator holds the
// subscription, so later events are pushed live rather than found in the first fetch.
async function openMessages(emu, client, sid) {
  const conversation = await client.getConversationBySid(sid);
  await conversation.getMessages();
  await waitUntil(`subscribed to ${sid}.messages`, () => subscribed(emu, `${sid}.messages`));
  return conversation;
}

// ---------------------------------------------------------------------------- cases

test('1. connects and syncs the conversation list', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t);
  const joined = await smsConversation(emu);
  const invited = await emu.ok('POST', '/conversations', { friendlyName: 'not yet joined' });
  await emu.ok('POST', `/conversations/${invited.sid}/invite`, { identity: BOT });

  const client = newClient(emu, mintToken());
  const states = collect(client, 'stateChanged');
  const connection = collect(client, 'connectionStateChanged');
  await waitForEvent(client, 'initialized');

  assert.equal(client.connectionState, 'connected');
  assert.ok(states.includes('initialized'), `stateChanged: ${states}`);
  assert.deepEqual(connection.slice(0, 2), ['connecting', 'connected']);
  assert.equal(client.user.identity, BOT);

  const page = await client.getSubscribedConversations();
  const bySid = Object.fromEntries(page.items.map((c) => [c.sid, c.status]));
  assert.deepEqual(bySid, { [joined.sid]: 'joined', [invited.sid]: 'notParticipating' });
  const conversation = page.items.find((c) => c.sid === joined.sid);
  assert.equal(conversation.friendlyName, `SMS with ${CUSTOMER}`);

  const state = await emu.ok('GET', '/state');
  assert.equal(state.sessions.length, 1);
  assert.equal(state.sessions[0].identity, BOT);
  assert.equal(state.sessions[0].connected, true);
  assert.equal(state.inits, 1);
  assert.equal(state.upstream['GET aim.us1.twilio.com/Client/v2/Configuration'], 1);
  assert.equal(state.conversations, 2);
});

test('2. join() turns a notParticipating conversation into joined', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t);
  const { sid } = await emu.ok('POST', '/conversations', { friendlyName: 'invite' });
  await emu.ok('POST', `/conversations/${sid}/invite`, { identity: BOT });
  const client = await startClient(emu);

  const page = await client.getSubscribedConversations();
  const conversation = page.items.find((c) => c.sid === sid);
  assert.equal(conversation.status, 'notParticipating');

  const joinedEvent = waitForEvent(client, 'conversationJoined', (c) => c.sid === sid);
  await conversation.join();
  await joinedEvent;
  assert.equal(conversation.status, 'joined');

  const view = await emu.ok('GET', `/conversations/${sid}`);
  assert.deepEqual(view.participants.map((p) => p.identity), [BOT]);
  const state = await emu.ok('GET', '/state');
  assert.equal(state.upstream[`POST aim.us1.twilio.com/Client/v2/Conversations/${sid}/Participants`], 1);
});

test('3. an inbound SMS message arrives once as messageAdded', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t);
  const conv = await smsConversation(emu);
  const client = await startClient(emu);
  await openMessages(emu, client, conv.sid);

  const added = collect(client, 'messageAdded');
  const injected = await emu.ok('POST', `/conversations/${conv.sid}/messages`, {
    author: CUSTOMER,
    body: 'Hello from a phone',
    attributes: { channel: 'sms' },
  });
  await waitUntil('messageAdded', () => added.length > 0);
  await sleep(1000);
  assert.equal(added.length, 1, 'messageAdded fired more than once');

  const [message] = added;
  const stored = (await emu.ok('GET', `/conversations/${conv.sid}/messages`)).messages[0];
  assert.equal(message.sid, injected.sid);
  assert.equal(message.index, injected.index);
  assert.equal(message.author, CUSTOMER);
  assert.equal(message.body, 'Hello from a phone');
  assert.deepEqual(message.attributes, { channel: 'sms' });
  assert.equal(message.participantSid, conv.smsParticipantSid);
  assert.equal(message.dateCreated.getTime(), new Date(stored.dateCreated).getTime());
  assert.equal(message.conversation.sid, conv.sid);
  const participant = await message.getParticipant();
  assert.equal(participant.sid, conv.smsParticipantSid);
  assert.equal(participant.type, 'sms');
  assert.equal(participant.bindings.sms.address, CUSTOMER);
});

test('4. sendMessage posts as the token identity', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t);
  const conv = await smsConversation(emu);
  const client = await startClient(emu);
  const conversation = await openMessages(emu, client, conv.sid);

  const own = waitForEvent(client, 'messageAdded');
  const attributes = { correlationId: 'abc-123', n: 1 };
  const index = await conversation.sendMessage('hi', attributes);
  const message = await own;

  assert.equal(message.index, index);
  assert.equal(message.author, client.user.identity);
  assert.equal(message.author, BOT);
  assert.equal(message.body, 'hi');
  assert.deepEqual(message.attributes, attributes);
  assert.equal(message.participantSid, conv.botParticipantSid);

  const { messages } = await emu.ok('GET', `/conversations/${conv.sid}/messages`);
  assert.equal(messages.length, 1);
  assert.equal(messages[0].index, index);
  assert.equal(messages[0].sid, message.sid);
  assert.equal(messages[0].author, BOT);
  assert.equal(messages[0].body, 'hi');
  assert.deepEqual(JSON.parse(messages[0].attributes), attributes);
  assert.equal(messages[0].participantSid, conv.botParticipantSid);
});

test('5. token about to expire, updateToken, expiry and reconnect with a fresh token', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t);
  const conv = await smsConversation(emu);
  const client = await startClient(emu);
  await openMessages(emu, client, conv.sid);

  const warned = waitForEvent(client, 'tokenAboutToExpire');
  await emu.ok('POST', '/tokens/about-to-expire');
  await warned;
  const second = mintToken({ ttl: 1800 });
  await client.updateToken(second);
  let state = await emu.ok('GET', '/state');
  assert.equal(state.tokenUpdates, 1);
  assert.equal(state.sessions[0].tokenExpiresAt, new Date(tokenExp(second) * 1000).toISOString());

  const expired = waitForEvent(client, 'tokenExpired');
  const disconnected = waitForEvent(client, 'connectionStateChanged', (s) => s === 'disconnected');
  await emu.ok('POST', '/tokens/expire');
  await expired;
  // updateToken is only honoured once the SDK has finished disconnecting.
  await disconnected;

  const connected = waitForEvent(client, 'connectionStateChanged', (s) => s === 'connected');
  await client.updateToken(mintToken());
  await connected;
  state = await emu.ok('GET', '/state');
  assert.equal(state.inits, 2);
  assert.equal(state.sessions.length, 1, 'the reconnect should resume the session by continuation token');
  assert.equal(state.sessions[0].connected, true);

  await waitUntil('re-subscribed', () => subscribed(emu, `${conv.sid}.messages`));
  const added = waitForEvent(client, 'messageAdded');
  const injected = await emu.ok('POST', `/conversations/${conv.sid}/messages`, { author: CUSTOMER, body: 'still there?' });
  const message = await added;
  assert.equal(message.sid, injected.sid);
  assert.equal(message.body, 'still there?');

  // The token that was expired is refused at init from now on.
  const stale = newClient(emu, second);
  const error = await waitForEvent(stale, 'connectionError', (e) => e.terminal);
  assert.equal(error.httpStatusCode, 401);
  assert.equal(error.errorCode, 20104);
});

test('6. messages sent while the socket is down are replayed in order after reconnect', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t);
  const conv = await smsConversation(emu);
  const client = await startClient(emu);
  await openMessages(emu, client, conv.sid);

  const added = collect(client, 'messageAdded');
  const reconnecting = waitForEvent(client, 'connectionStateChanged', (s) => s === 'connecting');
  await emu.ok('POST', '/sockets/refuse', { on: true });
  await emu.ok('POST', '/sockets/drop', { mode: 'terminate' });
  await reconnecting;

  const injected = [];
  for (const body of ['first', 'second', 'third']) {
    injected.push(await emu.ok('POST', `/conversations/${conv.sid}/messages`, { author: CUSTOMER, body }));
  }
  await sleep(1500); // long enough for at least one refused reconnect attempt
  assert.notEqual(client.connectionState, 'connected');
  assert.equal(added.length, 0);
  let state = await emu.ok('GET', '/state');
  assert.equal(state.sessions[0].connected, false);

  const connected = waitForEvent(client, 'connectionStateChanged', (s) => s === 'connected', 30_000);
  await emu.ok('POST', '/sockets/refuse', { on: false });
  await connected;
  await waitUntil('three messageAdded', () => added.length >= 3, 30_000);
  await sleep(1000);

  assert.deepEqual(added.map((m) => m.body), ['first', 'second', 'third']);
  assert.deepEqual(added.map((m) => m.sid), injected.map((m) => m.sid));
  assert.deepEqual(added.map((m) => m.index), injected.map((m) => m.index));
  state = await emu.ok('GET', '/state');
  assert.equal(state.inits, 2);
  assert.equal(state.sessions.length, 1, 'the reconnect should resume the session by continuation token');

  // A plain WebSocket close (no twilsock close frame) is reconnected the same way.
  const again = waitForEvent(client, 'connectionStateChanged', (s) => s === 'connected', 30_000);
  await emu.ok('POST', '/sockets/drop', { mode: 'close' });
  await again;
  const fourth = waitForEvent(client, 'messageAdded');
  const injectedFourth = await emu.ok('POST', `/conversations/${conv.sid}/messages`, { author: CUSTOMER, body: 'fourth' });
  assert.equal((await fourth).sid, injectedFourth.sid);
  await sleep(500);
  assert.equal(added.length, 4);
  state = await emu.ok('GET', '/state');
  assert.equal(state.inits, 3);
});

test('7. after a restart getMessages pages through history with an anchor', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t);
  const conv = await smsConversation(emu);
  const bodies = [];
  const inject = async () => {
    const body = `message ${bodies.length}`;
    bodies.push(body);
    await emu.ok('POST', `/conversations/${conv.sid}/messages`, { author: CUSTOMER, body });
  };
  for (let i = 0; i < 23; i += 1) await inject();

  const first = await startClient(emu);
  const seen = await (await first.getConversationBySid(conv.sid)).getMessages(5);
  assert.deepEqual(seen.items.map((m) => m.body), bodies.slice(18, 23));
  await first.shutdown();

  await inject();
  await inject();

  const listItems = `GET cds.us1.twilio.com/v3/Lists/`;
  const fetchesBefore = Object.entries((await emu.ok('GET', '/state')).upstream)
    .filter(([k]) => k.startsWith(listItems) && k.endsWith('/Items')).reduce((n, [, v]) => n + v, 0);

  const second = await startClient(emu);
  const conversation = await second.getConversationBySid(conv.sid);
  let page = await conversation.getMessages(5);
  assert.deepEqual(page.items.map((m) => m.index), [20, 21, 22, 23, 24]);
  assert.deepEqual(page.items.map((m) => m.body), bodies.slice(20));
  assert.equal(page.hasNextPage, false);
  const collected = [...page.items];
  while (page.hasPrevPage) {
    page = await page.prevPage();
    collected.unshift(...page.items);
  }
  assert.deepEqual(collected.map((m) => m.index), bodies.map((_, i) => i));
  assert.deepEqual(collected.map((m) => m.body), bodies);

  let forward = await conversation.getMessages(4, 3, 'forward');
  assert.deepEqual(forward.items.map((m) => m.index), [3, 4, 5, 6]);
  assert.equal(forward.hasNextPage, true);
  forward = await forward.nextPage();
  assert.deepEqual(forward.items.map((m) => m.index), [7, 8, 9, 10]);

  const fetchesAfter = Object.entries((await emu.ok('GET', '/state')).upstream)
    .filter(([k]) => k.startsWith(listItems) && k.endsWith('/Items')).reduce((n, [, v]) => n + v, 0);
  assert.ok(fetchesAfter - fetchesBefore >= 3, `expected paged history fetches, saw ${fetchesAfter - fetchesBefore}`);
});

test('8. joining beyond the per-identity conversation limit fails like Twilio', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t, { EMULATOR_PARTICIPANT_LIMIT: '3' });
  for (let i = 0; i < 3; i += 1) await smsConversation(emu);
  const { sid } = await emu.ok('POST', '/conversations', { friendlyName: 'fourth' });
  await emu.ok('POST', `/conversations/${sid}/invite`, { identity: BOT });
  const client = await startClient(emu);

  const page = await client.getSubscribedConversations();
  const fourth = page.items.find((c) => c.sid === sid);
  assert.equal(fourth.status, 'notParticipating');
  await assert.rejects(fourth.join(), (err) => {
    assert.equal(err.status, 400);
    assert.equal(err.body.code, 50214);
    assert.equal(err.body.status, 400);
    return true;
  });
  await sleep(300);
  assert.equal(fourth.status, 'notParticipating');
  const view = await emu.ok('GET', `/conversations/${sid}`);
  assert.deepEqual(view.participants, []);

  // The service-side add is refused the same way.
  const direct = await emu.call('POST', `/conversations/${sid}/participants`, { identity: BOT });
  assert.equal(direct.status, 400);
  assert.equal(direct.body.code, 50214);
});

test('9. upstream 429s are retried by the SDK until the fault clears', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t);
  const conv = await smsConversation(emu);

  const configuration = 'GET aim.us1.twilio.com/Client/v2/Configuration';
  await emu.ok('POST', '/faults', { upstream429: 2, match: configuration });
  const client = await startClient(emu);
  let state = await emu.ok('GET', '/state');
  assert.equal(state.upstream[configuration], 3);

  const peek = `GET aim.us1.twilio.com/Client/v2/Conversations/${conv.sid}`;
  await emu.ok('POST', '/faults', { upstream429: 2, match: peek });
  const conversation = await client.peekConversationBySid(conv.sid);
  assert.equal(conversation.sid, conv.sid);
  state = await emu.ok('GET', '/state');
  assert.equal(state.upstream[peek], 3);
  assert.equal(state.pendingFaults, 0);
});

test('10. tokens Twilio would refuse are refused at init with its error codes', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t);
  const cases = [
    ['expired', mintToken({ ttl: -60 }), 20104],
    ['wrong secret', mintToken({ secret: 'not-the-secret' }), 20107],
    ['unknown API key', mintToken({ keySid: 'SK11111111111111111111111111111111' }), 20103],
    ['other chat service', mintToken({ serviceSid: 'IS11111111111111111111111111111111' }), 20106],
  ];
  for (const [name, token, code] of cases) {
    const client = newClient(emu, token);
    const expiredEvent = code === 20104 ? waitForEvent(client, 'tokenExpired') : null;
    const error = await waitForEvent(client, 'connectionError', (e) => e.terminal);
    assert.equal(error.httpStatusCode, 401, name);
    assert.equal(error.errorCode, code, name);
    if (expiredEvent) await expiredEvent;
    await waitUntil(`${name}: denied`, () => client.connectionState === 'denied', 5000);
  }
  const state = await emu.ok('GET', '/state');
  assert.equal(state.sessions.length, 0);
  assert.equal(state.inits, cases.length);
});

test('11. a conversation closed on the server shows as closed, and leave() removes the bot', { timeout: CASE_TIMEOUT }, async (t) => {
  const emu = await startEmulator(t);
  const conv = await smsConversation(emu);
  const client = await startClient(emu);
  const conversation = await openMessages(emu, client, conv.sid);
  assert.equal(conversation.state.current, 'active');

  const closedAt = '2025-01-02T03:04:05.000Z';
  const updated = waitForEvent(client, 'conversationUpdated',
    ({ conversation: c, updateReasons }) => c.sid === conv.sid && updateReasons.includes('state'));
  await emu.ok('POST', `/conversations/${conv.sid}/state`, { state: 'closed', dateUpdated: closedAt });
  await updated;
  assert.equal(conversation.state.current, 'closed');
  assert.equal(conversation.state.dateUpdated.getTime(), new Date(closedAt).getTime());

  const left = waitForEvent(client, 'conversationLeft', (c) => c.sid === conv.sid);
  await conversation.leave();
  await left;
  const view = await emu.ok('GET', `/conversations/${conv.sid}`);
  assert.deepEqual(view.participants.map((p) => p.identity), [null]);
});
