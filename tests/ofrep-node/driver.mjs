// Drives the real, unmodified OFREP server provider for Node (@openfeature/ofrep-provider on
// @openfeature/server-sdk) against a brb server, for tests/ofrep_providers.rs.
//
// One JSON command per line on stdin, one JSON answer per line on stdout:
//   {"op": "eval", "flag": "workers", "default": false, "token": "brb_...", "auth": "bearer"}
//   -> {"value", "variant", "reason", "error_code", "error_message", "metadata", "ms"}
// `auth` is "bearer" (Authorization: Bearer) or "api-key" (X-API-Key). The token goes through
// the provider's own headersFactory, called before every evaluation. BRB_URL is the base URL.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { createInterface } from 'node:readline';
import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';

// Not every package exports its package.json: read it from node_modules.
const versionOf = (name) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version;

let headers = [];
await OpenFeature.setProviderAndWait(
  new OFREPProvider({ baseUrl: process.env.BRB_URL, headersFactory: async () => headers }),
);
const client = OpenFeature.getClient();
const context = { targetingKey: hostname(), pid: process.pid };
const out = (v) => process.stdout.write(`${JSON.stringify(v)}\n`);
out({
  ready: true,
  provider: `@openfeature/ofrep-provider ${versionOf('@openfeature/ofrep-provider')}`,
  sdk: `@openfeature/server-sdk ${versionOf('@openfeature/server-sdk')}`,
});

for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  if (cmd.op === 'quit') break;
  headers =
    cmd.auth === 'api-key' ? [['X-API-Key', cmd.token]] : [['Authorization', `Bearer ${cmd.token}`]];
  const t = performance.now();
  const d = await client.getBooleanDetails(cmd.flag, cmd.default, context);
  out({
    value: d.value,
    variant: d.variant ?? null,
    reason: d.reason ?? null,
    error_code: d.errorCode ?? null,
    error_message: d.errorMessage ?? null,
    metadata: d.flagMetadata ?? {},
    ms: performance.now() - t,
  });
}
await OpenFeature.close();
