'use strict';
// A small Sync service: documents, lists and maps with Twilio's descriptors, item paging and
// a per-object event log.
//
// The event log is what makes reconnects work: the SDK re-subscribes with the newest event id
// it applied, and every later event must be replayed before `subscription_established`.
// The SDK drops an item event whose id is not above the item's cached `last_event_id`, so
// every item carries the id of the event that last touched it and ids never go backwards.

const { sid: newSid, isoNow, TwilioError } = require('./ids');

const COLLECTION = { document: 'Documents', list: 'Lists', map: 'Maps' };
const SID_PREFIX = { document: 'ET', list: 'ES', map: 'MP' };
const MAX_PAGE_SIZE = 100;
const DEFAULT_PAGE_SIZE = 50;

class SyncObject {
  constructor(store, type, { uniqueName = null, data = {}, acl = null } = {}) {
    this.store = store;
    this.type = type;
    this.sid = newSid(SID_PREFIX[type]);
    this.uniqueName = uniqueName;
    this.revision = 0;
    this.lastEventId = 0;
    this.dateCreated = isoNow();
    this.dateUpdated = this.dateCreated;
    this.data = type === 'document' ? data : undefined;
    this.items = new Map();
    this.nextIndex = 0;
    this.log = [];
    // Who may read this object; null = everyone with a valid token.
    this.acl = acl;
  }

  get url() {
    return `${this.store.baseUrl}/v3/${COLLECTION[this.type]}/${this.sid}`;
  }

  itemUrl(keyOrIndex) {
    return `${this.url}/Items/${encodeURIComponent(String(keyOrIndex))}`;
  }

  readableBy(identity) {
    return this.acl === null || this.acl(identity);
  }

  descriptor(includeItems = false) {
    const d = {
      sid: this.sid,
      unique_name: this.uniqueName,
      url: this.url,
      revision: String(this.revision),
      last_event_id: this.lastEventId,
      date_created: this.dateCreated,
      date_updated: this.dateUpdated,
      date_expires: null,
      created_by: 'system',
    };
    if (this.type === 'document') {
      d.data = this.data;
    } else {
      d.links = { items: `${this.url}/Items` };
      if (includeItems) d.items = this.sortedKeys('asc').map((k) => this.itemDescriptor(this.items.get(k)));
    }
    return d;
  }

  itemDescriptor(item) {
    const d = this.type === 'list' ? { index: item.index } : { key: item.key };
    return {
      ...d,
      data: item.data,
      last_event_id: item.lastEventId,
      revision: String(item.revision),
      url: this.itemUrl(this.type === 'list' ? item.index : item.key),
      date_created: item.dateCreated,
      date_updated: item.dateUpdated,
      date_expires: null,
      created_by: 'system',
    };
  }

  sortedKeys(order) {
    const keys = [...this.items.keys()];
    if (this.type === 'list') keys.sort((a, b) => a - b);
    else keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    if (order === 'desc') keys.reverse();
    return keys;
  }

  // Appends one event to the log and hands it to the store's listeners.
  _emit(eventType, fields) {
    this.lastEventId += 1;
    this.revision += 1;
    this.dateUpdated = isoNow();
    const event = {
      id: this.lastEventId,
      date_created: this.dateUpdated,
      [`${this.type}_sid`]: this.sid,
      [`${this.type}_revision`]: String(this.revision),
      [`${this.type}_unique_name`]: this.uniqueName,
      ...fields,
    };
    const entry = { eventType, event };
    this.log.push(entry);
    this.store._publish(this, entry);
    return event;
  }

  eventsSince(lastEventId) {
    if (typeof lastEventId !== 'number' || !Number.isFinite(lastEventId)) return [];
    return this.log.filter((e) => e.event.id > lastEventId);
  }

  // --- documents
  setData(data) {
    this.data = data;
    this._emit('document_updated', { document_data: data });
  }

  // --- lists and maps
  _putItem(key, data) {
    const existing = this.items.get(key);
    const now = isoNow();
    const item = existing || { dateCreated: now, revision: 0 };
    if (this.type === 'list') item.index = key;
    else item.key = key;
    item.data = data;
    item.revision += 1;
    item.dateUpdated = now;
    item.lastEventId = this.lastEventId + 1; // the id _emit is about to assign
    this.items.set(key, item);
    const prefix = this.type === 'list' ? 'list' : 'map';
    const keyField = this.type === 'list' ? { item_index: key } : { item_key: key };
    this._emit(`${prefix}_item_${existing ? 'updated' : 'added'}`, {
      ...keyField,
      item_data: data,
      item_revision: String(item.revision),
      item_url: this.itemUrl(key),
    });
    return item;
  }

  push(data) {
    const index = this.nextIndex;
    this.nextIndex += 1;
    return this._putItem(index, data);
  }

  set(key, data) {
    return this._putItem(key, data);
  }

  get(key) {
    return this.items.get(key);
  }

  remove(key) {
    const item = this.items.get(key);
    if (!item) return false;
    this.items.delete(key);
    const prefix = this.type === 'list' ? 'list' : 'map';
    const keyField = this.type === 'list' ? { item_index: key } : { item_key: key };
    this._emit(`${prefix}_item_removed`, { ...keyField, item_data: item.data });
    return true;
  }

  // Sync's Items query. `params` are already URL-decoded. `From` is inclusive; results come
  // in the requested order; `previous_token`/`next_token` are non-null exactly when items
  // exist before the first / after the last returned item in that order.
  queryItems(params) {
    const parseKey = (v) => (this.type === 'list' ? Number(v) : String(v));
    const single = this.type === 'list' ? params.Index : params.Key;
    if (single !== undefined) {
      const item = this.items.get(parseKey(single));
      return { items: item ? [this.itemDescriptor(item)] : [], meta: this._meta(null, null) };
    }
    let order = params.Order === 'desc' ? 'desc' : 'asc';
    let pageSize = Number(params.PageSize) || DEFAULT_PAGE_SIZE;
    pageSize = Math.max(1, Math.min(MAX_PAGE_SIZE, pageSize));
    let from = params.From !== undefined ? parseKey(params.From) : undefined;
    let direction = 'next';
    let exclusive = false;
    if (params.PageToken) {
      const t = decodeToken(params.PageToken);
      if (!t) throw new TwilioError(400, 20001, 'Invalid PageToken');
      order = t.o;
      from = t.f;
      direction = t.d;
      exclusive = true;
    }
    const keys = this.sortedKeys(order);
    const before = (a, b) => (order === 'asc' ? a < b : a > b);
    let page;
    if (direction === 'next') {
      const start = from === undefined ? keys : keys.filter((k) => (exclusive ? before(from, k) : !before(k, from)));
      page = start.slice(0, pageSize);
    } else {
      const prior = keys.filter((k) => before(k, from));
      page = prior.slice(Math.max(0, prior.length - pageSize));
    }
    const hasBefore = page.length > 0
      ? keys.some((k) => before(k, page[0]))
      : from !== undefined && keys.some((k) => before(k, from));
    const hasAfter = page.length > 0 ? keys.some((k) => before(page[page.length - 1], k)) : false;
    const prevToken = hasBefore ? encodeToken({ o: order, f: page.length ? page[0] : from, d: 'prev' }) : null;
    const nextToken = hasAfter ? encodeToken({ o: order, f: page[page.length - 1], d: 'next' }) : null;
    return {
      items: page.map((k) => this.itemDescriptor(this.items.get(k))),
      meta: this._meta(prevToken, nextToken, pageSize),
    };
  }

  _meta(previousToken, nextToken, pageSize = DEFAULT_PAGE_SIZE) {
    const items = `${this.url}/Items`;
    return {
      key: 'items',
      page_size: pageSize,
      previous_token: previousToken,
      next_token: nextToken,
      previous_url: previousToken ? `${items}?PageToken=${previousToken}` : null,
      next_url: nextToken ? `${items}?PageToken=${nextToken}` : null,
      url: items,
    };
  }
}

function encodeToken(t) {
  return Buffer.from(JSON.stringify(t)).toString('base64url');
}

function decodeToken(s) {
  try {
    const t = JSON.parse(Buffer.from(String(s), 'base64url').toString('utf8'));
    if ((t.o !== 'asc' && t.o !== 'desc') || (t.d !== 'next' && t.d !== 'prev') || t.f === undefined) return null;
    return t;
  } catch {
    return null;
  }
}

class SyncStore {
  constructor(baseUrl) {
    this.baseUrl = baseUrl;
    this.listeners = new Set();
    this.reset();
  }

  reset() {
    this.objects = new Map();
    this.byName = new Map();
  }

  create(type, options = {}) {
    const obj = new SyncObject(this, type, options);
    this.objects.set(obj.sid, obj);
    if (obj.uniqueName) this.byName.set(`${type}:${obj.uniqueName}`, obj);
    return obj;
  }

  // By sid or unique name, as Sync's REST API accepts either.
  find(type, id) {
    const bySid = this.objects.get(id);
    if (bySid && bySid.type === type) return bySid;
    return this.byName.get(`${type}:${id}`) || null;
  }

  bySid(sid) {
    return this.objects.get(sid) || null;
  }

  onEvent(fn) {
    this.listeners.add(fn);
  }

  _publish(obj, entry) {
    for (const fn of this.listeners) fn(obj, entry);
  }
}

module.exports = { SyncStore, SyncObject, COLLECTION };
