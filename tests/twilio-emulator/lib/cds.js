'use strict';
// The Sync ("cds") upstream calls: object descriptors, item pages and subscriptions.
//
// Subscriptions belong to one twilsock connection. The SDK asks for them with the newest event
// id it has applied per object; the answer is the HTTP reply first, then every missed event
// (as `twilio.sync.event`, tagged with the request's correlation_id), then
// `subscription_established`. Until that notification arrives the SDK re-sends the request
// every `estimated_delivery_in_ms`.

const { TwilioError } = require('./ids');

const TYPE_BY_COLLECTION = { Documents: 'document', Lists: 'list', Maps: 'map' };

function syncNotFound(id) {
  return new TwilioError(404, 54100, `Sync object ${id} not found`);
}

function forbidden() {
  return new TwilioError(403, 54007, 'Access forbidden for identity');
}

function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

// conn: {identity, subscriptions: Map<sid, SyncObject>, notify(type, payload)}
function handleCds(store, conn, req) {
  const segs = req.path.split('/').filter(Boolean).map(safeDecode);

  if (segs[0] === 'v4' && segs[1] === 'Subscriptions' && segs.length === 2) {
    if (req.method !== 'POST') throw new TwilioError(405, 20004, 'Method not allowed');
    return subscriptions(store, conn, typeof req.body === 'string' ? JSON.parse(req.body || '{}') : req.body || {});
  }

  const type = TYPE_BY_COLLECTION[segs[1]];
  if (segs[0] !== 'v3' || !type || segs.length < 3) {
    throw new TwilioError(404, 20404, `The requested resource ${req.path} was not found`);
  }
  // Conversations' Sync objects are written by the service only; clients read them.
  if (req.method !== 'GET') throw forbidden();

  const obj = store.find(type, segs[2]);
  if (!obj) throw syncNotFound(segs[2]);
  if (!obj.readableBy(conn.identity)) throw forbidden();

  if (segs.length === 3) {
    return { status: 200, body: obj.descriptor(req.params.Include === 'items') };
  }
  if (segs[3] === 'Items' && type !== 'document') {
    if (segs.length === 4) return { status: 200, body: obj.queryItems(req.params) };
    if (segs.length === 5) {
      const key = type === 'list' ? Number(segs[4]) : segs[4];
      const item = obj.get(key);
      if (!item) throw new TwilioError(404, type === 'list' ? 54151 : 54201, `Item ${segs[4]} not found`);
      return { status: 200, body: obj.itemDescriptor(item) };
    }
  }
  throw new TwilioError(404, 20404, `The requested resource ${req.path} was not found`);
}

function subscriptions(store, conn, body) {
  const correlationId = body.correlation_id;
  const requests = Array.isArray(body.requests) ? body.requests : [];
  const established = [];
  const failed = [];
  const canceled = [];
  // Notifications go through conn.notify, which the connection holds back until the HTTP
  // reply to this request is on the wire.
  for (const r of requests) {
    const sid = r.object_sid;
    if (body.action === 'cancel') {
      conn.subscriptions.delete(sid);
      canceled.push({ object_sid: sid });
      continue;
    }
    const obj = store.bySid(sid);
    if (!obj) {
      failed.push({ object_sid: sid, error: { status: 404, code: 54100, message: 'Sync object not found' } });
      continue;
    }
    if (!obj.readableBy(conn.identity)) {
      failed.push({ object_sid: sid, error: { status: 403, code: 54007, message: 'Access forbidden for identity' } });
      continue;
    }
    for (const { eventType, event } of obj.eventsSince(r.last_event_id)) {
      conn.notify('twilio.sync.event', { event_type: eventType, correlation_id: correlationId, event });
    }
    conn.subscriptions.set(obj.sid, obj);
    established.push({
      object_sid: obj.sid,
      object_type: obj.type,
      replay_status: 'completed',
      last_event_id: obj.lastEventId,
    });
  }
  const tell = (eventType, events) => {
    if (events.length) conn.notify('twilio.sync.event', { event_type: eventType, correlation_id: correlationId, events });
  };
  tell('subscription_established', established);
  tell('subscription_failed', failed);
  tell('subscription_canceled', canceled);
  return { status: 200, body: { estimated_delivery_in_ms: 5000, max_batch_size: 100, ttl_in_s: -1 } };
}

module.exports = { handleCds };
