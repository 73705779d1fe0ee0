'use strict';
// Twilio-shaped identifiers, timestamps and the error type every layer answers with.

const crypto = require('node:crypto');

// A Twilio SID: two-letter type prefix + 32 lowercase hex digits.
function sid(prefix) {
  return prefix + crypto.randomBytes(16).toString('hex');
}

function isoNow() {
  // Twilio stamps resources to the second.
  return new Date(Math.floor(Date.now() / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

// An error as Twilio's REST layer reports it: an HTTP status plus a Twilio error code.
// `body()` is the JSON body Twilio sends with it.
class TwilioError extends Error {
  constructor(status, code, message, extra = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.extra = extra;
  }

  body() {
    return {
      status: this.status,
      code: this.code,
      message: this.message,
      more_info: `https://www.twilio.com/docs/errors/${this.code}`,
      ...this.extra,
    };
  }
}

const HTTP_REASONS = {
  200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content', 400: 'Bad Request',
  401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed',
  409: 'Conflict', 429: 'Too Many Requests', 500: 'Internal Server Error', 503: 'Service Unavailable',
};

function reason(status) {
  return HTTP_REASONS[status] || 'Unknown';
}

module.exports = { sid, isoNow, TwilioError, reason };
