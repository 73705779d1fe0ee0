// Swagger UI in a real browser: loads /swagger-ui/ in headless Debian Chromium (driven by
// playwright-core, which downloads no browser of its own), checks that the operations are
// listed and the description's link to the AsyncAPI document works, runs "Try it out" →
// "Execute" on GET /healthz and expects 200 with "status": "ok".
// Saves a screenshot to artifacts/swagger-ui.png (and artifacts/swagger-ui-failure.png when a
// step fails). Exits non-zero on any failure.
//
//   node swagger.mjs http://127.0.0.1:8080      (or BASE_URL=… node swagger.mjs)
//
// Usually started by run.sh, which also builds and starts the service.

import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const baseUrl = (process.argv[2] || process.env.BASE_URL || "").replace(/\/+$/, "");
const artifacts = resolve(process.env.ARTIFACTS_DIR || join(here, "..", "..", "artifacts"));
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_TIMEOUT_MS = 20_000;

/** Operations Swagger UI must list, as [method, path]. */
const EXPECTED_OPERATIONS = [
  ["post", "/webhooks/twilio/sms"],
  ["get", "/healthz"],
  ["get", "/livez"],
  ["get", "/readyz"],
  ["get", "/metrics"],
  ["get", "/_debug/twilio"],
  ["post", "/v1/messages"],
];

if (!baseUrl) {
  console.error("usage: node swagger.mjs BASE_URL   (e.g. http://127.0.0.1:8080)");
  process.exit(2);
}

function step(name) {
  console.log(`• ${name}`);
}

/** The operation block of `method path` in Swagger UI. */
function operation(page, method, path) {
  return page
    .locator(`.opblock.opblock-${method}`)
    .filter({ has: page.locator(`.opblock-summary-path[data-path="${path}"]`) });
}

mkdirSync(artifacts, { recursive: true });
const userDataDir = mkdtempSync(join(tmpdir(), "swagger-ui-chromium-"));
let context;
let page;
let failed = false;

try {
  step(`launch ${executablePath} (profile ${userDataDir})`);
  // launchPersistentContext is how playwright takes an explicit, fresh --user-data-dir.
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  page = context.pages()[0] ?? (await context.newPage());
  const consoleErrors = [];
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => consoleErrors.push(String(error)));

  step(`open ${baseUrl}/swagger-ui/`);
  const response = await page.goto(`${baseUrl}/swagger-ui/`, { waitUntil: "domcontentloaded" });
  if (!response || response.status() !== 200) {
    throw new Error(`GET /swagger-ui/ answered ${response ? response.status() : "nothing"}`);
  }
  await page.locator(".swagger-ui .info .title").first().waitFor();
  const title = (await page.locator(".swagger-ui .info .title").first().innerText()).trim();
  if (!title.includes("ingress-egress")) {
    throw new Error(`unexpected API title ${JSON.stringify(title)}`);
  }
  console.log(`  title: ${title.replace(/\s+/g, " ")}`);

  step("the description links the AsyncAPI document, and the link works");
  const asyncapiLink = page.locator('.swagger-ui .info a[href$="/api-docs/asyncapi.yaml"]').first();
  await asyncapiLink.waitFor();
  const asyncapiUrl = new URL(await asyncapiLink.getAttribute("href"), page.url()).toString();
  const asyncapi = await page.request.get(asyncapiUrl);
  const asyncapiText = await asyncapi.text();
  if (asyncapi.status() !== 200 || !/^asyncapi: 3\./m.test(asyncapiText)) {
    throw new Error(`${asyncapiUrl} answered ${asyncapi.status()}: ${asyncapiText.slice(0, 80)}`);
  }
  console.log(`  ${asyncapiUrl}: ${asyncapi.headers()["content-type"]}, ${asyncapiText.length} bytes`);

  step("every expected operation is listed");
  await page.locator(".opblock").first().waitFor();
  for (const [method, path] of EXPECTED_OPERATIONS) {
    const count = await operation(page, method, path).count();
    if (count !== 1) {
      throw new Error(`${method.toUpperCase()} ${path}: ${count} operation blocks, expected 1`);
    }
  }
  const listed = await page.locator(".opblock-summary-path").evaluateAll((nodes) =>
    nodes.map((n) => n.getAttribute("data-path")),
  );
  console.log(`  ${listed.length} operations: ${listed.join(", ")}`);

  step("expand GET /healthz");
  const healthz = operation(page, "get", "/healthz");
  await healthz.locator(".opblock-summary").first().click();
  await healthz.locator(".opblock-body").waitFor();

  step('click "Try it out"');
  await healthz.getByRole("button", { name: "Try it out" }).click();

  step('click "Execute"');
  await healthz.getByRole("button", { name: "Execute" }).click();

  step("the live response is 200 with \"status\": \"ok\"");
  const live = healthz.locator(".live-responses-table");
  await live.waitFor();
  const status = healthz.locator(".live-responses-table tr.response .response-col_status").first();
  await status.waitFor();
  const statusText = (await status.innerText()).trim();
  if (!/^200\b/.test(statusText)) {
    throw new Error(`response status shown as ${JSON.stringify(statusText)}, expected 200`);
  }
  const body = healthz.locator(".live-responses-table tr.response .response-col_description pre").first();
  await body.waitFor();
  const bodyText = await body.innerText();
  if (!/"status":\s*"ok"/.test(bodyText)) {
    throw new Error(`response body ${JSON.stringify(bodyText)} lacks "status": "ok"`);
  }
  console.log(`  status ${statusText.split(/\s/)[0]}, body ${bodyText.replace(/\s+/g, " ").trim()}`);
  const requestUrl = await healthz.locator(".request-url pre").first().innerText();
  console.log(`  request URL: ${requestUrl.trim()}`);

  await healthz.scrollIntoViewIfNeeded();
  const shot = join(artifacts, "swagger-ui.png");
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);

  if (process.env.SWAGGER_OPERATOR_SEND === "1") {
    // Only against a development service without tokens (run.sh starts one): the operator send
    // with the documented SMS example is accepted (202) and answers with its ids.
    step("POST /v1/messages: Try it out with the SMS example → 202");
    const send = operation(page, "post", "/v1/messages");
    await send.locator(".opblock-summary").first().click();
    await send.getByRole("button", { name: "Try it out" }).click();
    await send.getByRole("button", { name: "Execute" }).click();
    const sendStatus = send.locator(".live-responses-table tr.response .response-col_status").first();
    await sendStatus.waitFor();
    const sendStatusText = (await sendStatus.innerText()).trim();
    const sendBody = await send
      .locator(".live-responses-table tr.response .response-col_description pre")
      .first()
      .innerText();
    if (!/^202\b/.test(sendStatusText) || !/"correlationId"/.test(sendBody)) {
      throw new Error(`operator send answered ${sendStatusText}: ${sendBody}`);
    }
    console.log(`  status 202, body ${sendBody.replace(/\s+/g, " ").trim()}`);
    await send.scrollIntoViewIfNeeded();
    const sendShot = join(artifacts, "swagger-ui-operator-send.png");
    await send.screenshot({ path: sendShot });
    console.log(`screenshot: ${sendShot}`);
  }
  if (consoleErrors.length > 0) {
    console.log(`browser console errors (not fatal):\n  ${consoleErrors.join("\n  ")}`);
  }
  console.log("Swagger UI check passed");
} catch (error) {
  failed = true;
  console.error(`Swagger UI check FAILED: ${error && error.message ? error.message : error}`);
  if (page) {
    const shot = join(artifacts, "swagger-ui-failure.png");
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    console.error(`failure screenshot: ${shot}`);
  }
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
