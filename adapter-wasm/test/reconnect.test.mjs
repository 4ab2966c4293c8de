// Losing the server and coming back: the element's colours and countdown, resume without loss
// through a cut network, the gap after a real restart, a refused token, offline and online.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { launchBrowser, openTestPage, startProxy, startServer, waitActive, waitFor } from './helpers.mjs';

describe('reconnection', () => {
  let server;
  let proxy;
  let browser;
  let context;

  before(async () => {
    server = await startServer({ args: ['--shutdown-spread', '1s'] });
    proxy = await startProxy(server.port);
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await proxy?.stop().catch(() => {});
    await server?.close();
  });

  /** A page whose client (through the proxy) is active; `attempts` counts its sockets. */
  async function activePage(options = {}) {
    context = await browser.newContext();
    const page = await openTestPage(context, server);
    const attempts = { count: 0 };
    page.on('websocket', () => attempts.count++);
    await page.evaluate(
      ({ token, url, options }) => start({ token, url, conversationId: 'reconnect', ...options }).connect(),
      { token: server.token, url: proxy.wsUrl, options },
    );
    return { page, attempts };
  }

  const tone = (page) => page.locator('connection-status').getAttribute('tone');
  const statusText = (page) => page.locator('connection-status [role=status]').textContent();
  const countdown = (page) =>
    page.evaluate(() => document.querySelector('connection-status').shadowRoot.querySelector('[part=countdown]').textContent);

  test('a lost server turns the element yellow with a countdown; back, it is green and the messages sent meanwhile arrive once, in order', async () => {
    const { page } = await activePage({ reconnect: { baseMs: 3000, jitter: 'none' } });
    assert.equal(await tone(page), 'ok');
    const before = await page.evaluate(() => client.connectionId);
    await server.publish('reconnect', { type: 'data.test.n', payload: { n: 0 } });
    await waitFor(() => page.evaluate(() => messages.length == 1), 'the first message');

    await proxy.stop();
    await waitFor(async () => (await tone(page)) == 'wait', 'yellow');
    assert.match(await statusText(page), /^Reconnecting: connection lost$/);
    const first = Number(/(\d+) s/.exec(await waitFor(() => countdown(page), 'a countdown'))[1]);
    await page.waitForTimeout(1100);
    const second = Number(/(\d+) s/.exec(await countdown(page))?.[1] ?? 0);
    assert.ok(second < first, `the countdown went from ${first} to ${second}`);

    for (let n = 1; n <= 5; n++) {
      await server.publish('reconnect', { type: 'data.test.n', payload: { n } });
    }
    // Sent while away: queued, and sent once the session is back (after the replay).
    const queued = await page.evaluate(() => client.send('data.chat.say', { text: 'while away' }));
    assert.equal(queued.status, 'queued');
    assert.equal(await page.evaluate(() => client.status.queued), 1);
    await proxy.start();
    await waitActive(page, 15_000);
    assert.equal(await tone(page), 'ok');
    assert.equal(await statusText(page), 'Connected');
    await server.publish('reconnect', { type: 'data.test.n', payload: { n: 6 } });
    await waitFor(() => page.evaluate(() => messages.length >= 8), 'every message');
    await page.waitForTimeout(300);
    const received = await page.evaluate(() => messages.map((m) => [m.type, m.payload.n ?? m.correlationId]));
    assert.deepEqual(received, [
      ...[0, 1, 2, 3, 4, 5].map((n) => ['data.test.n', n]),
      ['data.chat.say', queued.id],
      ['data.test.n', 6],
    ]);
    const sequences = await page.evaluate(() => messages.map((m) => m.sequence));
    assert.deepEqual(sequences, [1, 2, 3, 4, 5, 6, 7, 8]);
    const connected = await page.evaluate(() => events.filter((e) => e.event == 'connected').map((e) => e.data));
    assert.equal(connected.length, 2);
    assert.deepEqual(connected[1], { connectionId: before, resumed: true, replayed: 5 });
    assert.equal(await page.evaluate(() => events.filter((e) => e.event == 'gap').length), 0);
    await context.close();
  });

  test('a real server restart is reported as a gap, then the client works on a new session', async () => {
    const { page } = await activePage();
    const before = await page.evaluate(() => client.connectionId);
    await server.restart();
    await waitFor(() => page.evaluate(() => events.some((e) => e.event == 'gap')), 'a gap', 20_000);
    await waitActive(page, 15_000);
    const states = await page.evaluate(() => events.filter((e) => e.event == 'statechange').map((e) => e.data.reason));
    assert.ok(states.includes('server_shutdown'), `states: ${states}`);
    const gap = await page.evaluate(() => events.find((e) => e.event == 'gap').data);
    assert.equal(gap.reason, 'resume_refused');
    assert.notEqual(await page.evaluate(() => client.connectionId), before);
    await server.publish('reconnect', { type: 'data.test.n', payload: { n: 1 } });
    await waitFor(() => page.evaluate(() => messages.length == 1), 'a message on the new session');
    await context.close();
  });

  test('a refused token turns the element red with the reason, and nothing is tried again', async () => {
    context = await browser.newContext();
    const page = await openTestPage(context, server);
    let attempts = 0;
    page.on('websocket', () => attempts++);
    const outcome = await page.evaluate(async (url) => {
      try {
        await start({ token: 'not-a-token', url, conversationId: 'reconnect' }).connect();
        return 'connected';
      } catch (error) {
        return error.message;
      }
    }, server.wsUrl);
    assert.equal(outcome, 'do_not_reconnect');
    assert.equal(await tone(page), 'fail');
    assert.equal(await statusText(page), 'Disconnected: authentication failed');
    const closed = await page.evaluate(() => events.filter((e) => e.event == 'statechange').at(-1).data);
    assert.equal(closed.code, 4000);
    assert.equal(closed.willReconnect, false);
    await page.waitForTimeout(3000);
    assert.equal(attempts, 1);
    await context.close();
  });

  test('coming back to the page (visible) checks the socket at once: a dead one is replaced', async () => {
    // The heartbeat would notice a dead socket after 60 s; the probe on wake takes 0.5 s.
    const { page } = await activePage({ probeTimeout: 500, pingInterval: 0 });
    const session = await page.evaluate(() => client.connectionId);
    proxy.freeze();
    await page.evaluate(() => {
      // Headless Chromium never hides a page: play the visibility change.
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
      document.dispatchEvent(new Event('visibilitychange'));
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    await waitFor(
      () => page.evaluate(() => events.some((e) => e.event == 'disconnected' && e.data.reason == 'probe_timeout')),
      'the probe to time out',
    );
    await waitActive(page);
    const connected = await page.evaluate(() => events.filter((e) => e.event == 'connected').at(-1).data);
    assert.equal(connected.connectionId, session);
    assert.equal(connected.resumed, true);
    await context.close();
  });

  test('offline: no attempts while offline; back online, it reconnects at once', async () => {
    // A 20 s backoff: reconnecting within the test can only be the `online` event's doing.
    const { page, attempts } = await activePage({ reconnect: { baseMs: 20_000, jitter: 'none' } });
    await context.setOffline(true);
    proxy.cut();
    await waitFor(async () => (await tone(page)) == 'fail', 'red');
    assert.equal(await statusText(page), 'Reconnecting: offline');
    const status = await page.evaluate(() => client.status);
    assert.equal(status.online, false);
    assert.equal(status.nextRetryAt, null);
    const made = attempts.count;
    await page.waitForTimeout(2000);
    assert.equal(attempts.count, made, 'no attempt while offline');
    await context.setOffline(false);
    await waitActive(page, 5000);
    assert.equal(attempts.count, made + 1);
    assert.equal(await page.evaluate(() => client.status.resumed), true);
    await context.close();
  });
});
