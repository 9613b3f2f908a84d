'use strict';
// Sends SLUICE_EVENTS events to a Sluice server through RudderStack's Node
// SDK (@rudderstack/rudder-sdk-node; gzips its request bodies by default),
// exactly as an application would, then flushes until every event's callback
// has fired. Used by TestE2ERudderSDKNode (cmd/sluice/e2e_test.go).
//
// Environment: SLUICE_URL (http://127.0.0.1:PORT), SLUICE_WRITE_KEY,
// SLUICE_EVENTS (count), SLUICE_PREFIX (messageId prefix).
// Prints one JSON line on stdout: {sent, ok, failed, errors, requests};
// exits non-zero unless every event's callback reported success.
const Analytics = require('@rudderstack/rudder-sdk-node');

const url = process.env.SLUICE_URL;
const writeKey = process.env.SLUICE_WRITE_KEY;
const n = Number(process.env.SLUICE_EVENTS || '24');
const prefix = process.env.SLUICE_PREFIX || 'rudder-sdk-node';

async function main() {
  if (!url || !writeKey) throw new Error('SLUICE_URL and SLUICE_WRITE_KEY are required');
  const errors = [];
  const client = new Analytics(writeKey, {
    dataPlaneUrl: url,
    path: '/v1/batch',
    flushAt: 5,
    flushInterval: 100,
    retryCount: 2,
    logLevel: 'error',
    errorHandler: (err) => errors.push(`request failed: ${err && (err.response ? err.response.status : err.code || err.message)}`),
  });
  // Record what went over the wire: the SDK's axios instance (the documented
  // axiosInstance option defaults to one it creates) with an interceptor.
  const requests = [];
  if (client.axiosInstance && client.axiosInstance.interceptors) {
    client.axiosInstance.interceptors.response.use(
      (res) => {
        const h = res.config.headers || {};
        requests.push({ url: res.config.url, status: res.status, contentEncoding: h['Content-Encoding'] || h['content-encoding'] || '' });
        return res;
      },
      (err) => {
        const cfg = err.config || {};
        const h = cfg.headers || {};
        requests.push({ url: cfg.url, status: err.response ? err.response.status : 0, contentEncoding: h['Content-Encoding'] || h['content-encoding'] || '' });
        return Promise.reject(err);
      },
    );
  }

  const sent = [];
  let ok = 0;
  let failed = 0;
  let outstanding = n;
  let allDone;
  const finished = new Promise((resolve) => {
    allDone = resolve;
  });
  const done = (err) => {
    if (err) {
      failed++;
      errors.push(String(err));
    } else {
      ok++;
    }
    if (--outstanding === 0) allDone();
  };
  for (let i = 0; i < n; i++) {
    const messageId = `${prefix}-${i}`;
    const userId = `user-${i % 4}`;
    const anonymousId = `anon-${i % 3}`;
    switch (i % 6) {
      case 0:
        client.track({ messageId, userId, event: 'Order Completed', properties: { orderId: `o-${i}`, total: i * 1.5 } }, done);
        sent.push({ messageId, type: 'track', key: userId });
        break;
      case 1:
        client.identify({ messageId, userId, traits: { email: `${userId}@example.com`, plan: 'pro' } }, done);
        sent.push({ messageId, type: 'identify', key: userId });
        break;
      case 2:
        client.page({ messageId, anonymousId, category: 'Docs', name: 'Install', properties: { path: '/docs/install' } }, done);
        sent.push({ messageId, type: 'page', key: anonymousId });
        break;
      case 3:
        client.screen({ messageId, anonymousId, userId, name: 'Checkout', properties: { step: 2 } }, done);
        sent.push({ messageId, type: 'screen', key: anonymousId });
        break;
      case 4:
        client.group({ messageId, userId, groupId: `g-${i}`, traits: { name: 'Acme', employees: 42 } }, done);
        sent.push({ messageId, type: 'group', key: userId });
        break;
      default:
        client.alias({ messageId, userId, previousId: anonymousId }, done);
        sent.push({ messageId, type: 'alias', key: userId });
    }
  }
  // flush() sends at most flushAt events per call: call it until every
  // event's callback has fired (bounded in count and time).
  const deadline = Date.now() + 30000;
  for (let i = 0; i < 1000 && outstanding > 0 && Date.now() < deadline; i++) {
    await new Promise((resolve) => {
      client.flush(() => resolve());
    });
    if (outstanding > 0) await new Promise((resolve) => setTimeout(resolve, 20));
  }
  let timer;
  await Promise.race([finished, new Promise((resolve) => (timer = setTimeout(resolve, Math.max(0, deadline - Date.now()))))]);
  clearTimeout(timer);
  process.stdout.write(JSON.stringify({ sent, ok, failed, errors, requests }) + '\n');
  process.exitCode = ok === n && failed === 0 && outstanding === 0 ? 0 : 1;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
