// Drives the real, unmodified OFREP web provider (@openfeature/ofrep-web-provider on
// @openfeature/web-sdk) in Debian's Chromium against a brb server, for tests/ofrep_providers.rs.
// It is the provider that caches the bulk answer and follows the `eventStreams` the bulk answer
// names (ADR-0008); polling is off (its default), so a change can only reach it by the stream.
//
// BRB_URL: the control plane; BRB_TOKEN: a token. The page is served by this script (Playwright
// answers its requests) at the control plane's own origin, as an application behind the same
// load balancer would be: no CORS involved. Prints one JSON line per observation:
//   {"why": "ready" | "changed", "value", "variant", "reason", "error_code", "t_ms"}
//   {"stream": "open"}                  the page opened the OFREP event stream
//   {"bulk": N}                         the N-th bulk evaluation request
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const base = process.env.BRB_URL;
const token = process.env.BRB_TOKEN;
const here = fileURLToPath(new URL('.', import.meta.url));
const out = (v) => process.stdout.write(`${JSON.stringify(v)}\n`);
const start = performance.now();

const modules = {
  '@openfeature/core': '@openfeature/core/dist/esm/index.js',
  '@openfeature/web-sdk': '@openfeature/web-sdk/dist/esm/index.js',
  '@openfeature/ofrep-core': '@openfeature/ofrep-core/index.esm.js',
  '@openfeature/ofrep-web-provider': '@openfeature/ofrep-web-provider/index.esm.js',
};
const importMap = {
  imports: Object.fromEntries(
    Object.entries(modules).map(([name, file]) => [name, `/ofrep-web-check/modules/${file}`]),
  ),
};
const page_html = `<!doctype html>
<meta charset="utf-8">
<script type="importmap">${JSON.stringify(importMap)}</script>
<script type="module">
  import { OpenFeature, ProviderEvents } from '@openfeature/web-sdk';
  import { OFREPWebProvider } from '@openfeature/ofrep-web-provider';
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  history.replaceState(null, '', location.pathname);
  await OpenFeature.setProviderAndWait(new OFREPWebProvider({
    baseUrl: location.origin,
    headers: [['Authorization', 'Bearer ' + token]],
    cacheMode: 'disabled',
  }));
  const client = OpenFeature.getClient();
  const report = (why) => {
    const d = client.getBooleanDetails('workers', true);
    window.brbReport({ why, value: d.value, variant: d.variant ?? null, reason: d.reason ?? null,
                       error_code: d.errorCode ?? null });
  };
  client.addHandler(ProviderEvents.ConfigurationChanged, () => report('changed'));
  report('ready');
</script>`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage();
await page.exposeFunction('brbReport', (r) => out({ ...r, t_ms: performance.now() - start }));
page.on('pageerror', (e) => process.stderr.write(`page error: ${e}\n`));
page.on('console', (m) => process.stderr.write(`page console: ${m.text()}\n`));
let bulk = 0;
page.on('request', (r) => {
  const path = new URL(r.url()).pathname;
  if (path === '/ofrep/v1/events') out({ stream: 'open' }); // never the URL: it holds the channel
  if (path === '/ofrep/v1/evaluate/flags') out({ bulk: ++bulk });
});
await page.route(`${base}/ofrep-web-check/**`, (route) => {
  const path = new URL(route.request().url()).pathname;
  if (path === '/ofrep-web-check/index.html') {
    return route.fulfill({ contentType: 'text/html', body: page_html });
  }
  const file = path.slice('/ofrep-web-check/modules/'.length);
  if (!Object.values(modules).includes(file)) return route.fulfill({ status: 404, body: '' });
  return route.fulfill({
    contentType: 'text/javascript',
    body: readFileSync(`${here}node_modules/${file}`),
  });
});
await page.goto(`${base}/ofrep-web-check/index.html#token=${encodeURIComponent(token)}`);

// Runs until stdin closes (the test ends it).
process.stdin.resume();
process.stdin.on('end', async () => {
  await browser.close();
  process.exit(0);
});
