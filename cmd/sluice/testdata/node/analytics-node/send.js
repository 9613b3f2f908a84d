'use strict';
// Sends SLUICE_EVENTS events to a Sluice server through Segment's Node SDK
// (@segment/analytics-node), exactly as an application would, then flushes
// with closeAndFlush(). Used by TestE2EAnalyticsNode (cmd/sluice/e2e_test.go).
//
// Environment: SLUICE_URL (http://127.0.0.1:PORT), SLUICE_WRITE_KEY,
// SLUICE_EVENTS (count), SLUICE_PREFIX (messageId prefix).
// Prints one JSON line on stdout: {sent, ok, failed, errors, requests};
// exits non-zero unless every event's callback reported success.
const { Analytics } = require('@segment/analytics-node');

const url = process.env.SLUICE_URL;
const writeKey = process.env.SLUICE_WRITE_KEY;
const n = Number(process.env.SLUICE_EVENTS || '24');
const prefix = process.env.SLUICE_PREFIX || 'analytics-node';

async function main() {
  if (!url || !writeKey) throw new Error('SLUICE_URL and SLUICE_WRITE_KEY are required');
  const analytics = new Analytics({
    writeKey,
    host: url,
    path: '/v1/batch',
    flushAt: 7,
    flushInterval: 100,
    maxRetries: 3,
    httpRequestTimeout: 10000,
  });
  const requests = [];
  const errors = [];
  analytics.on('http_response', (r) => requests.push({ url: r.url, status: r.status }));
  analytics.on('error', (e) => errors.push(String((e && (e.reason || e.code)) || e)));

  const sent = [];
  let ok = 0;
  let failed = 0;
  const done = (err) => {
    if (err) {
      failed++;
      errors.push(String(err));
    } else {
      ok++;
    }
  };
  for (let i = 0; i < n; i++) {
    const messageId = `${prefix}-${i}`;
    const userId = `user-${i % 4}`;
    const anonymousId = `anon-${i % 3}`;
    switch (i % 6) {
      case 0:
        analytics.track({ messageId, userId, event: 'Order Completed', properties: { orderId: `o-${i}`, total: i * 1.5 } }, done);
        sent.push({ messageId, type: 'track', key: userId });
        break;
      case 1:
        analytics.identify({ messageId, userId, traits: { email: `${userId}@example.com`, plan: 'pro' } }, done);
        sent.push({ messageId, type: 'identify', key: userId });
        break;
      case 2:
        analytics.page({ messageId, anonymousId, category: 'Docs', name: 'Install', properties: { path: '/docs/install' } }, done);
        sent.push({ messageId, type: 'page', key: anonymousId });
        break;
      case 3:
        analytics.screen({ messageId, anonymousId, userId, name: 'Checkout', properties: { step: 2 } }, done);
        sent.push({ messageId, type: 'screen', key: anonymousId });
        break;
      case 4:
        analytics.group({ messageId, userId, groupId: `g-${i}`, traits: { name: 'Acme', employees: 42 } }, done);
        sent.push({ messageId, type: 'group', key: userId });
        break;
      default:
        analytics.alias({ messageId, userId, previousId: anonymousId }, done);
        sent.push({ messageId, type: 'alias', key: userId });
    }
  }
  await analytics.closeAndFlush({ timeout: 30000 });
  process.stdout.write(JSON.stringify({ sent, ok, failed, errors, requests }) + '\n');
  process.exitCode = ok === n && failed === 0 ? 0 : 1;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
