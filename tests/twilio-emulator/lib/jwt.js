'use strict';
// Checks a Twilio Access Token the way Twilio does before a twilsock session starts.
//
// The order of the checks matters for which error code comes back: Twilio finds the signing
// key through `iss`, so an unknown key or account (20103) is reported before a bad
// signature (20107). Codes and titles are Twilio's (https://www.twilio.com/docs/api/errors):
//   20101 Invalid Access Token            (not a JWT, undecodable parts)
//   20102 Invalid Access Token header     (alg/typ/cty not the Twilio FPA ones)
//   20103 Invalid Access Token issuer/subject
//   20104 Access Token expired or expiration date invalid (also: lifetime over 24 h)
//   20105 Access Token not yet valid      (nbf in the future)
//   20106 Invalid Access Token grants     (no identity, no chat grant, other service)
//   20107 Invalid Access Token signature

const crypto = require('node:crypto');

const MAX_LIFETIME_S = 24 * 3600;
// Twilio tolerates some clock skew; the exact allowance is not published. Keep it small so
// the emulator never accepts a token Twilio would refuse by much.
const SKEW_S = 5;

class TokenError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
    this.status = 401;
  }
}

function b64urlJson(part, what) {
  try {
    return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    throw new TokenError(20101, `Invalid Access Token: ${what} is not base64url JSON`);
  }
}

// Returns {header, claims, identity, exp}; throws TokenError.
function verifyAccessToken(token, cfg, nowSeconds = Math.floor(Date.now() / 1000)) {
  if (typeof token !== 'string' || token.length === 0) {
    throw new TokenError(20101, 'Invalid Access Token: no token');
  }
  const parts = token.split('.');
  if (parts.length !== 3 || parts.some((p) => p.length === 0)) {
    throw new TokenError(20101, 'Invalid Access Token: not a JWT');
  }
  const header = b64urlJson(parts[0], 'header');
  const claims = b64urlJson(parts[1], 'payload');
  if (header === null || typeof header !== 'object' || claims === null || typeof claims !== 'object') {
    throw new TokenError(20101, 'Invalid Access Token: header and payload must be objects');
  }
  if (header.alg !== 'HS256' || header.cty !== 'twilio-fpa;v=1' || header.typ !== 'JWT') {
    throw new TokenError(20102, 'Invalid Access Token header: expected alg HS256, typ JWT, cty twilio-fpa;v=1');
  }
  if (claims.iss !== cfg.apiKeySid || claims.sub !== cfg.accountSid) {
    throw new TokenError(20103, 'Invalid Access Token issuer/subject');
  }
  const expected = crypto.createHmac('sha256', cfg.apiKeySecret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], 'base64url');
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    throw new TokenError(20107, 'Invalid Access Token signature');
  }
  if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp)) {
    throw new TokenError(20104, 'Access Token expired or expiration date invalid: no exp');
  }
  if (claims.exp <= nowSeconds - SKEW_S) {
    throw new TokenError(20104, 'Access Token expired or expiration date invalid');
  }
  const start = typeof claims.iat === 'number' ? claims.iat : nowSeconds;
  if (claims.exp - Math.min(start, nowSeconds) > MAX_LIFETIME_S + SKEW_S) {
    throw new TokenError(20104, 'Access Token expired or expiration date invalid: lifetime over 24 hours');
  }
  if (typeof claims.nbf === 'number' && claims.nbf > nowSeconds + SKEW_S) {
    throw new TokenError(20105, 'Access Token not yet valid');
  }
  const grants = claims.grants;
  const identity = grants && grants.identity;
  if (typeof identity !== 'string' || identity.length === 0) {
    throw new TokenError(20106, 'Invalid Access Token grants: no identity');
  }
  if (!grants.chat || grants.chat.service_sid !== cfg.chatServiceSid) {
    throw new TokenError(20106, 'Invalid Access Token grants: no chat grant for this Conversations service');
  }
  return { header, claims, identity, exp: claims.exp };
}

module.exports = { verifyAccessToken, TokenError };
