'use strict';
// Twilsock v3 frame codec.
//
// A frame is `TWILSOCK V3.0 <header byte length>\r\n<header JSON>\r\n<payload>`, and the
// header's `payload_size` is the payload's UTF-8 byte length. Lengths are bytes, not
// characters, so everything here works on Buffers. The SDK silently drops text WebSocket
// messages, which is why callers must send the Buffer as a binary message.

const MAGIC = 'TWILSOCK';
const VERSION = 'V3.0';
const CRLF = Buffer.from('\r\n');

function encode(header, payload) {
  let payloadText = '';
  if (payload !== undefined && payload !== null) {
    payloadText = typeof payload === 'string' ? payload : JSON.stringify(payload);
  }
  const payloadBytes = Buffer.from(payloadText, 'utf8');
  const fullHeader = { ...header, payload_size: payloadBytes.length };
  if (payloadBytes.length > 0 && !fullHeader.payload_type) {
    fullHeader.payload_type = 'application/json';
  }
  const headerBytes = Buffer.from(JSON.stringify(fullHeader), 'utf8');
  const magic = Buffer.from(`${MAGIC} ${VERSION} ${headerBytes.length}`, 'latin1');
  return Buffer.concat([magic, CRLF, headerBytes, CRLF, payloadBytes]);
}

class FrameError extends Error {}

// Returns {header, payload, payloadText}. `payload` is parsed JSON when the payload type is
// JSON (the default when absent, as in the SDK's own parser), otherwise the raw text.
function decode(data) {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const eol = buf.indexOf(CRLF);
  if (eol < 0) throw new FrameError('no frame preamble');
  const [magic, version, sizeText] = buf.subarray(0, eol).toString('latin1').split(' ');
  if (magic !== MAGIC || version !== VERSION) {
    throw new FrameError(`unsupported protocol ${magic} ${version}`);
  }
  const headerSize = Number(sizeText);
  if (!Number.isInteger(headerSize) || headerSize <= 0) throw new FrameError('bad header size');
  const headerStart = eol + CRLF.length;
  const headerEnd = headerStart + headerSize;
  if (headerEnd > buf.length) throw new FrameError('truncated header');
  let header;
  try {
    header = JSON.parse(buf.subarray(headerStart, headerEnd).toString('utf8'));
  } catch (e) {
    throw new FrameError(`header is not JSON: ${e.message}`);
  }
  const size = Number(header.payload_size) || 0;
  const payloadStart = headerEnd + CRLF.length;
  const payloadText = size > 0 ? buf.subarray(payloadStart, payloadStart + size).toString('utf8') : '';
  let payload;
  if (size > 0) {
    const type = header.payload_type;
    if (!type || String(type).startsWith('application/json')) {
      try {
        payload = JSON.parse(payloadText);
      } catch (e) {
        throw new FrameError(`payload is not JSON: ${e.message}`);
      }
    } else {
      payload = payloadText;
    }
  }
  return { header, payload, payloadText };
}

module.exports = { encode, decode, FrameError };
