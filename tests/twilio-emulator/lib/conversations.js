'use strict';
// The Conversations service on top of the Sync store, and the "aim" upstream calls the SDK
// (and a bot) makes over twilsock.
//
// Conversations keep no real-time state of their own: each conversation is a Sync document
// (`CH….channel`), a messages list (`CH….messages`) and a participants map (`CH….roster`),
// and each identity has a my_conversations map (its membership view, status `joined` or
// `notParticipating`) and a user-info map. Clients learn about every change only through
// events on those objects, so every mutation here is a Sync write.

const { sid: newSid, isoNow, TwilioError } = require('./ids');

const AIM_PREFIX = '/Client/v2';

class ConversationsService {
  constructor({ store, config, hosts, notifyIdentity }) {
    this.store = store;
    this.config = config;
    this.hosts = hosts; // {aim, cds, mcs}
    this.notifyIdentity = notifyIdentity || (() => {});
    this.reset();
  }

  reset() {
    this.users = new Map();
    this.conversations = new Map();
    this.byUniqueName = new Map();
  }

  aimUrl(path) {
    return `https://${this.hosts.aim}${AIM_PREFIX}${path}`;
  }

  // ------------------------------------------------------------------ users

  user(identity) {
    let u = this.users.get(identity);
    if (u) return u;
    const sid = newSid('US');
    u = { identity, sid, invited: new Set(), lastRead: new Map(), dateCreated: isoNow() };
    const ownerOnly = (who) => who === identity;
    u.myConversations = this.store.create('map', { uniqueName: `${sid}.channels`, acl: ownerOnly });
    u.userInfo = this.store.create('map', { uniqueName: `${sid}.info` });
    // The SDK reads these three keys while initialising; a missing one fails client init.
    u.userInfo.set('friendlyName', { value: null });
    u.userInfo.set('attributes', { value: '{}' });
    u.userInfo.set('reachability', { online: false, notifiable: false });
    this.users.set(identity, u);
    return u;
  }

  // Number of conversations the identity is a participant of (the per-identity cap counts these).
  membershipCount(identity) {
    let n = 0;
    for (const conv of this.conversations.values()) if (this.participantByIdentity(conv, identity)) n += 1;
    return n;
  }

  // ------------------------------------------------------------------ conversations

  createConversation({ friendlyName = null, uniqueName = null, attributes = {}, createdBy = 'system' } = {}) {
    if (uniqueName !== null && uniqueName !== undefined && this.byUniqueName.has(uniqueName)) {
      throw new TwilioError(409, 50353, 'Conversation with provided unique name already exists');
    }
    const sid = newSid('CH');
    const now = isoNow();
    const conv = {
      sid,
      friendlyName,
      uniqueName: uniqueName ?? null,
      attributes: parseAttributes(attributes),
      createdBy,
      dateCreated: now,
      dateUpdated: now,
      participants: new Map(),
      messages: [],
      lastMessage: null,
      state: { current: 'active', dateUpdated: now },
    };
    const isParticipant = (who) => !!this.participantByIdentity(conv, who);
    const canSee = (who) => isParticipant(who) || this.user(who).invited.has(sid);
    conv.messagesList = this.store.create('list', { uniqueName: `${sid}.messages`, acl: isParticipant });
    conv.roster = this.store.create('map', { uniqueName: `${sid}.roster`, acl: isParticipant });
    conv.doc = this.store.create('document', { uniqueName: `${sid}.channel`, acl: canSee, data: {} });
    conv.doc.data = this.documentData(conv);
    this.conversations.set(sid, conv);
    if (conv.uniqueName) this.byUniqueName.set(conv.uniqueName, conv);
    return conv;
  }

  get(sidOrUniqueName) {
    const conv = this.conversations.get(sidOrUniqueName) || this.byUniqueName.get(sidOrUniqueName);
    if (!conv) throw new TwilioError(404, 20404, `The requested resource /Conversations/${sidOrUniqueName} was not found`);
    return conv;
  }

  /** Moves the conversation to `current` (active, inactive, closed) as of `dateUpdated`; the
   * conversation document's subscribers get a `document_updated`. */
  setState(conv, current, dateUpdated = isoNow()) {
    if (!['active', 'inactive', 'closed'].includes(current)) {
      throw new TwilioError(400, 50003, 'State must be active, inactive or closed');
    }
    conv.state = { current, dateUpdated };
    conv.doc.setData(this.documentData(conv));
  }

  documentData(conv) {
    const d = {
      messages: conv.messagesList.uniqueName,
      roster: conv.roster.uniqueName,
      friendlyName: conv.friendlyName,
      uniqueName: conv.uniqueName,
      attributes: conv.attributes,
      createdBy: conv.createdBy,
      dateCreated: conv.dateCreated,
      dateUpdated: conv.dateUpdated,
      state: { ...conv.state },
      bindings: {},
    };
    if (conv.lastMessage) d.lastMessage = conv.lastMessage;
    return d;
  }

  membershipItem(conv, identity, status) {
    const u = this.user(identity);
    return {
      channel: conv.doc.uniqueName,
      messages: conv.messagesList.uniqueName,
      roster: conv.roster.uniqueName,
      status,
      friendlyName: conv.friendlyName,
      uniqueName: conv.uniqueName,
      attributes: conv.attributes,
      createdBy: conv.createdBy,
      dateCreated: conv.dateCreated,
      dateUpdated: conv.dateUpdated,
      lastConsumedMessageIndex: u.lastRead.has(conv.sid) ? u.lastRead.get(conv.sid) : null,
      notificationLevel: 'default',
    };
  }

  statusOf(conv, identity) {
    if (this.participantByIdentity(conv, identity)) return 'joined';
    if (this.user(identity).invited.has(conv.sid)) return 'notParticipating';
    return null;
  }

  // ------------------------------------------------------------------ participants

  participantByIdentity(conv, identity) {
    for (const p of conv.participants.values()) if (p.identity !== null && p.identity === identity) return p;
    return null;
  }

  rosterData(p) {
    const d = {
      identity: p.identity,
      type: p.type,
      attributes: p.attributes,
      dateCreated: p.dateCreated,
      dateUpdated: p.dateUpdated,
      roleSid: p.roleSid,
      lastConsumedMessageIndex: p.lastReadMessageIndex,
      lastConsumptionTimestamp: p.lastReadTimestamp,
    };
    if (p.type === 'chat') {
      d.userInfo = this.user(p.identity).userInfo.sid;
    } else {
      // The SDK only exposes an SMS participant's address through `bindings`.
      d.bindings = { [p.type]: { address: p.address, proxy_address: p.proxyAddress } };
    }
    return d;
  }

  // {identity} for a chat participant, {address, proxyAddress} for an SMS one.
  addParticipant(conv, spec) {
    const now = isoNow();
    let p;
    if (typeof spec.identity === 'string' && spec.identity.length > 0) {
      if (this.participantByIdentity(conv, spec.identity)) {
        throw new TwilioError(409, 50433, 'Participant already exists');
      }
      if (this.membershipCount(spec.identity) >= this.config.participantLimit) {
        throw new TwilioError(400, 50214, 'User conversation limit exceeded');
      }
      p = { identity: spec.identity, type: 'chat', address: null, proxyAddress: null };
    } else if (typeof spec.address === 'string' && spec.address.length > 0) {
      for (const other of conv.participants.values()) {
        if (other.address === spec.address) throw new TwilioError(409, 50416, 'A participant with this address is already in the conversation');
      }
      p = { identity: null, type: 'sms', address: spec.address, proxyAddress: spec.proxyAddress ?? null };
    } else {
      throw new TwilioError(400, 50400, 'Either identity or messaging binding address is required');
    }
    Object.assign(p, {
      sid: newSid('MB'),
      conversationSid: conv.sid,
      attributes: typeof spec.attributes === 'string' ? spec.attributes : JSON.stringify(spec.attributes ?? {}),
      roleSid: null,
      dateCreated: now,
      dateUpdated: now,
      lastReadMessageIndex: null,
      lastReadTimestamp: null,
    });
    conv.participants.set(p.sid, p);
    // Roster first, then the membership flip: the SDK opens the roster when it sees `joined`.
    conv.roster.set(p.sid, this.rosterData(p));
    if (p.identity !== null) {
      const u = this.user(p.identity);
      u.invited.delete(conv.sid);
      u.myConversations.set(conv.sid, this.membershipItem(conv, p.identity, 'joined'));
    }
    return p;
  }

  // Makes the conversation visible to `identity` without membership (status notParticipating).
  invite(conv, identity) {
    if (this.participantByIdentity(conv, identity)) {
      throw new TwilioError(409, 50433, 'Participant already exists');
    }
    const u = this.user(identity);
    u.invited.add(conv.sid);
    u.myConversations.set(conv.sid, this.membershipItem(conv, identity, 'notParticipating'));
  }

  removeParticipant(conv, identityOrSid) {
    const p = conv.participants.get(identityOrSid) || this.participantByIdentity(conv, identityOrSid);
    if (!p) throw new TwilioError(404, 20404, `The requested resource /Conversations/${conv.sid}/Participants/${identityOrSid} was not found`);
    conv.participants.delete(p.sid);
    conv.roster.remove(p.sid);
    if (p.identity !== null) {
      const u = this.user(p.identity);
      u.invited.delete(conv.sid);
      u.myConversations.remove(conv.sid);
    }
    return p;
  }

  participantResponse(conv, p) {
    return {
      account_sid: this.config.accountSid,
      chat_service_sid: this.config.chatServiceSid,
      conversation_sid: conv.sid,
      sid: p.sid,
      identity: p.identity,
      role_sid: p.roleSid,
      attributes: p.attributes,
      date_created: p.dateCreated,
      date_updated: p.dateUpdated,
      last_read_message_index: p.lastReadMessageIndex,
      last_read_timestamp: p.lastReadTimestamp,
      messaging_binding: p.type === 'chat' ? null : { type: p.type, address: p.address, proxy_address: p.proxyAddress },
      url: this.aimUrl(`/Conversations/${conv.sid}/Participants/${p.sid}`),
      links: { conversation: this.aimUrl(`/Conversations/${conv.sid}`) },
    };
  }

  // ------------------------------------------------------------------ messages

  addMessage(conv, { author, body = null, attributes, media = null, participantSid } = {}) {
    if (typeof author !== 'string' || author.length === 0) throw new TwilioError(400, 20001, 'author is required');
    const medias = Array.isArray(media) && media.length > 0
      ? media.map((m) => ({
        sid: m.sid || newSid('ME'),
        category: 'media',
        filename: m.filename ?? null,
        contentType: m.contentType || m.content_type || 'application/octet-stream',
        size: m.size ?? 0,
      }))
      : null;
    if ((body === null || body === '') && !medias) {
      throw new TwilioError(400, 50020, 'Message body or media is required');
    }
    if (participantSid === undefined) {
      const p = this.participantByIdentity(conv, author)
        || [...conv.participants.values()].find((x) => x.address === author);
      participantSid = p ? p.sid : null;
    }
    const now = isoNow();
    const index = conv.messagesList.nextIndex;
    const msg = {
      sid: newSid('IM'),
      index,
      author,
      body,
      attributes: attributesString(attributes),
      dateCreated: now,
      dateUpdated: now,
      participantSid,
      media: medias,
    };
    conv.messages.push(msg);
    const data = {
      sid: msg.sid,
      text: msg.body,
      author: msg.author,
      attributes: msg.attributes,
      timestamp: msg.dateCreated,
      dateUpdated: msg.dateUpdated,
      memberSid: msg.participantSid,
      lastUpdatedBy: null,
      subject: null,
      contentSid: null,
      type: medias ? 'media' : 'text',
    };
    if (medias) data.medias = medias;
    conv.messagesList.push(data);
    conv.lastMessage = { index, timestamp: now };
    conv.dateUpdated = now;
    conv.doc.setData(this.documentData(conv));
    return msg;
  }

  messageResponse(conv, m) {
    return {
      sid: m.sid,
      index: m.index,
      account_sid: this.config.accountSid,
      chat_service_sid: this.config.chatServiceSid,
      conversation_sid: conv.sid,
      author: m.author,
      body: m.body,
      attributes: m.attributes,
      participant_sid: m.participantSid,
      date_created: m.dateCreated,
      date_updated: m.dateUpdated,
      media: m.media ? m.media.map((x) => ({ sid: x.sid, content_type: x.contentType, filename: x.filename, size: x.size, category: x.category })) : null,
      delivery: null,
      url: this.aimUrl(`/Conversations/${conv.sid}/Messages/${m.sid}`),
      links: {
        conversation: this.aimUrl(`/Conversations/${conv.sid}`),
        messages_receipts: this.aimUrl(`/Conversations/${conv.sid}/Messages/${m.sid}/Receipts`),
      },
    };
  }

  // ------------------------------------------------------------------ aim (upstream) calls

  configuration(identity) {
    const u = this.user(identity);
    return {
      identity,
      url: this.aimUrl('/Configuration'),
      sync_objects: { my_conversations: u.myConversations.sid, my_user_info: u.userInfo.sid },
      links: {
        my_conversations: this.aimUrl('/Me/Conversations'),
        conversations: this.aimUrl('/Conversations'),
        users: this.aimUrl('/Users'),
        current_user: this.aimUrl(`/Users/${encodeURIComponent(identity)}`),
        typing: this.aimUrl('/Indicators/Typing'),
        media_service: `https://${this.hosts.mcs}/v1/Services/${this.config.chatServiceSid}/Media`,
        media_set_service: `https://${this.hosts.mcs}/v1/Services/${this.config.chatServiceSid}/MediaSet`,
        messages_receipts: this.aimUrl('/Conversations/%s/Messages/%s/Receipts'),
      },
      options: {
        consumption_report_interval: 'PT5S',
        user_infos_to_subscribe: 100,
        reachability_enabled: false,
        http_cache_interval: 'PT5S',
        my_conversations_page_size: 50,
        media_attachments_count_limit: 10,
        media_attachment_size_limit_in_mb: 16,
        media_attachments_total_size_limit_in_mb: 16,
        email_histories_allowed_mime_types: [],
        email_bodies_allowed_mime_types: [],
      },
    };
  }

  myConversationResponse(conv, identity) {
    const u = this.user(identity);
    const lastRead = u.lastRead.has(conv.sid) ? u.lastRead.get(conv.sid) : null;
    const total = conv.messages.length;
    const p = this.participantByIdentity(conv, identity);
    return {
      conversation_sid: conv.sid,
      account_sid: this.config.accountSid,
      chat_service_sid: this.config.chatServiceSid,
      participant_sid: p ? p.sid : null,
      status: this.statusOf(conv, identity),
      conversation_state: conv.state.current,
      sync_objects: {
        conversation: conv.doc.uniqueName,
        messages: conv.messagesList.uniqueName,
        participants: conv.roster.uniqueName,
      },
      last_read_message_index: lastRead,
      unread_messages_count: lastRead === null ? total : Math.max(0, total - lastRead - 1),
      notification_level: 'default',
      friendly_name: conv.friendlyName,
      unique_name: conv.uniqueName,
      attributes: JSON.stringify(conv.attributes),
      date_created: conv.dateCreated,
      date_updated: conv.dateUpdated,
      created_by: conv.createdBy,
      url: this.aimUrl(`/Me/Conversations/${conv.sid}`),
      links: { conversation: this.aimUrl(`/Conversations/${conv.sid}`) },
    };
  }

  conversationResponse(conv) {
    return {
      sid: conv.sid,
      account_sid: this.config.accountSid,
      chat_service_sid: this.config.chatServiceSid,
      friendly_name: conv.friendlyName,
      unique_name: conv.uniqueName,
      attributes: JSON.stringify(conv.attributes),
      date_created: conv.dateCreated,
      date_updated: conv.dateUpdated,
      created_by: conv.createdBy,
      state: conv.state.current,
      participants_count: conv.participants.size,
      messages_count: conv.messages.length,
      sync_objects: {
        conversation: conv.doc.uniqueName,
        messages: conv.messagesList.uniqueName,
        participants: conv.roster.uniqueName,
      },
      url: this.aimUrl(`/Conversations/${conv.sid}`),
      links: {
        participants: this.aimUrl(`/Conversations/${conv.sid}/Participants`),
        messages: this.aimUrl(`/Conversations/${conv.sid}/Messages`),
      },
    };
  }

  requireParticipant(conv, identity) {
    const p = this.participantByIdentity(conv, identity);
    if (!p) throw new TwilioError(403, 50107, 'User not authorized for command');
    return p;
  }

  // req: {method, path, params (decoded), headers, body}; identity = the token's.
  // Returns {status, body}; throws TwilioError.
  handleAim(identity, req) {
    if (!req.path.startsWith(`${AIM_PREFIX}/`)) throw notFound(req.path);
    const segs = req.path.slice(AIM_PREFIX.length + 1).split('/').map(safeDecode);
    const m = req.method;
    const route = routeOf(segs);

    if (m === 'GET' && route === 'Configuration') return ok(this.configuration(identity));

    if (route === 'Me/Conversations' && m === 'GET') {
      const u = this.user(identity);
      const sids = [...u.myConversations.items.keys()];
      const pageSize = Math.max(1, Math.min(100, Number(req.params.PageSize) || 50));
      const offset = req.params.PageToken ? Number(Buffer.from(req.params.PageToken, 'base64url').toString()) || 0 : 0;
      const page = sids.slice(offset, offset + pageSize);
      const next = offset + pageSize < sids.length ? Buffer.from(String(offset + pageSize)).toString('base64url') : null;
      return ok({
        conversations: page.map((sid) => this.myConversationResponse(this.get(sid), identity)),
        meta: { page_size: pageSize, next_token: next, previous_token: null },
      });
    }
    if (route === 'Me/Conversations/:') {
      const conv = this.get(segs[2]);
      if (!this.statusOf(conv, identity)) throw notFound(req.path);
      if (m === 'GET') return ok(this.myConversationResponse(conv, identity));
      if (m === 'POST') {
        const body = jsonBody(req.body);
        if ('last_read_message_index' in body) this.setLastRead(conv, identity, body.last_read_message_index);
        return ok({ unread_messages_count: this.myConversationResponse(conv, identity).unread_messages_count });
      }
    }

    if (route === 'Conversations/:' && m === 'GET') return ok(this.conversationResponse(this.get(segs[1])));

    if (route === 'Conversations/:/Participants' && m === 'POST') {
      const conv = this.get(segs[1]);
      const body = jsonBody(req.body);
      const target = body.identity;
      if (typeof target !== 'string' || target.length === 0) {
        throw new TwilioError(400, 50400, 'Identity is required');
      }
      // A plain service user may add only itself; adding others needs a conversation role.
      if (target !== identity) this.requireParticipant(conv, identity);
      const p = this.addParticipant(conv, { identity: target, attributes: body.attributes });
      return { status: 201, body: this.participantResponse(conv, p) };
    }
    if (route === 'Conversations/:/Participants/:' && m === 'DELETE') {
      const conv = this.get(segs[1]);
      const target = segs[3];
      const self = this.participantByIdentity(conv, identity);
      // leave() removes the caller itself; removing others needs a conversation admin role.
      if (target !== identity && !(self && target === self.sid)) {
        throw new TwilioError(403, 50107, 'User not authorized for command');
      }
      this.removeParticipant(conv, target);
      return { status: 204, body: undefined };
    }

    if (route === 'Conversations/:/Messages' && m === 'POST') {
      const conv = this.get(segs[1]);
      const p = this.requireParticipant(conv, identity);
      const body = jsonBody(req.body);
      if (Array.isArray(body.media_sids) && body.media_sids.length > 0) {
        throw new TwilioError(400, 50020, 'Media is not supported by this emulator');
      }
      const msg = this.addMessage(conv, {
        author: identity,
        body: body.body ?? null,
        attributes: body.attributes,
        participantSid: p.sid,
      });
      return { status: 201, body: this.messageResponse(conv, msg) };
    }
    if (route === 'Conversations/:/Messages' && m === 'GET') {
      const conv = this.get(segs[1]);
      this.requireParticipant(conv, identity);
      const q = { ...req.params };
      if (q.Anchor !== undefined && q.From === undefined) q.From = q.Anchor;
      const page = conv.messagesList.queryItems(q);
      return ok({
        messages: page.items.map((it) => this.messageResponse(conv, conv.messages[it.index])),
        meta: {
          page_size: page.meta.page_size,
          previous_token: page.meta.previous_token,
          next_token: page.meta.next_token,
        },
      });
    }

    if (route === 'Users/:' && m === 'GET') {
      const who = segs[1];
      if (!this.users.has(who)) throw notFound(req.path);
      const u = this.user(who);
      return ok({
        identity: who,
        friendly_name: null,
        attributes: '{}',
        is_online: null,
        is_notifiable: null,
        sync_objects: { user_info_map: u.userInfo.sid },
        url: this.aimUrl(`/Users/${encodeURIComponent(who)}`),
      });
    }

    if (route === 'Indicators/Typing' && m === 'POST') {
      const form = new URLSearchParams(typeof req.body === 'string' ? req.body : '');
      const conv = this.get(form.get('ChannelSid') || '');
      this.requireParticipant(conv, identity);
      for (const p of conv.participants.values()) {
        if (p.identity && p.identity !== identity) {
          this.notifyIdentity(p.identity, 'twilio.ipmsg.typing_indicator', { channel_sid: conv.sid, identity, typing_timeout: 5 });
        }
      }
      return ok({ typing_timeout: 5 });
    }

    if (['Configuration', 'Me/Conversations', 'Me/Conversations/:', 'Conversations/:', 'Conversations/:/Participants',
      'Conversations/:/Participants/:', 'Conversations/:/Messages', 'Users/:', 'Indicators/Typing'].includes(route)) {
      throw new TwilioError(405, 20004, 'Method not allowed');
    }
    throw notFound(req.path);
  }

  setLastRead(conv, identity, index) {
    const u = this.user(identity);
    if (index === null) u.lastRead.delete(conv.sid);
    else u.lastRead.set(conv.sid, Number(index));
    const status = this.statusOf(conv, identity);
    if (status) u.myConversations.set(conv.sid, this.membershipItem(conv, identity, status));
    const p = this.participantByIdentity(conv, identity);
    if (p) {
      p.lastReadMessageIndex = index === null ? null : Number(index);
      p.lastReadTimestamp = isoNow();
      conv.roster.set(p.sid, this.rosterData(p));
    }
  }
}

// The aim path with every value segment (SID, identity) replaced by ':', e.g.
// 'Conversations/:/Participants/:'. A value is whatever follows a collection name, so an
// identity that happens to read 'Messages' is still a value.
const LITERALS = new Set(['Configuration', 'Me', 'Conversations', 'Participants', 'Messages', 'Users', 'Indicators', 'Typing']);
const COLLECTIONS = new Set(['Conversations', 'Participants', 'Messages', 'Users']);

function routeOf(segs) {
  return segs.map((s, i) => (COLLECTIONS.has(segs[i - 1]) || !LITERALS.has(s) ? ':' : s)).join('/');
}

function ok(body) {
  return { status: 200, body };
}

function notFound(path) {
  return new TwilioError(404, 20404, `The requested resource ${path} was not found`);
}

function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function jsonBody(body) {
  if (body === undefined || body === null || body === '') return {};
  if (typeof body === 'object') return body;
  try {
    const v = JSON.parse(body);
    return v && typeof v === 'object' ? v : {};
  } catch {
    throw new TwilioError(400, 20001, 'Request body is not JSON');
  }
}

function parseAttributes(a) {
  if (a === undefined || a === null) return {};
  if (typeof a === 'string') {
    try {
      return JSON.parse(a);
    } catch {
      throw new TwilioError(400, 50005, 'Attributes must be valid JSON');
    }
  }
  return a;
}

// Messages keep attributes as the JSON string the client sent, as Twilio does.
function attributesString(a) {
  if (a === undefined || a === null) return '{}';
  if (typeof a === 'string') {
    try {
      JSON.parse(a);
    } catch {
      throw new TwilioError(400, 50005, 'Attributes must be valid JSON');
    }
    return a;
  }
  return JSON.stringify(a);
}

module.exports = { ConversationsService, AIM_PREFIX };
