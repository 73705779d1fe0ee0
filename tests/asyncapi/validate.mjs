// Parses an AsyncAPI document with the AsyncAPI Initiative's parser (which resolves the
// relative $refs to the payload schema files and applies its validation rules) and fails on
// any error or warning. Usage: node validate.mjs ../../openapi/asyncapi.yaml
import { Parser, fromFile } from '@asyncapi/parser';

const file = process.argv[2];
if (!file) {
  console.error('usage: node validate.mjs <asyncapi.yaml>');
  process.exit(2);
}
const severities = ['error', 'warning', 'info', 'hint'];
const { document, diagnostics } = await fromFile(new Parser(), file).parse();
for (const d of diagnostics) {
  console.log(`[asyncapi] ${severities[d.severity]} ${d.code} at ${d.path.join('.') || '/'}: ${d.message}`);
}
const failing = diagnostics.filter((d) => d.severity <= 1);
if (!document || failing.length > 0) {
  console.error(`[asyncapi] ${file}: ${failing.length} error(s) or warning(s)`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
const messages = document.messages().all().map((m) => m.name());
console.log(`[asyncapi] ${file} is valid: ${channels.length} channels (${channels.join(', ')}), ${messages.length} messages`);
