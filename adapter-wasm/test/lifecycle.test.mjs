// The page's life: the back/forward cache, a duplicated tab, a reload. The browser keeps its
// back/forward cache and background timer throttling (playwright turns both off by default).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { launchBrowser, startServer, waitActive, waitFor } from './helpers.mjs';

describe('page lifecycle', () => {
  let server;
  let browser;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser({ realBrowser: true });
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  /** The test page, starting its client from the query (as a real page would, on every load). */
  async function open(context, conversation, options = {}) {
    const page = await context.newPage();
    const query = new URLSearchParams({ token: server.token, conversation, options: JSON.stringify(options) });
    await page.goto(`${server.origin}/app/test.html?${query}`);
    await waitActive(page);
    return page;
  }

  const connections = (page) => page.evaluate(() => events.filter((e) => e.event == 'connected').map((e) => e.data));

  test('leaving for another page and coming back (back/forward cache) resumes within a second', async () => {
    const context = await browser.newContext();
    // A 30 s backoff: coming back quickly can only be the `pageshow` event's doing.
    const page = await open(context, 'bfcache', { reconnect: { baseMs: 30_000, jitter: 'none' } });
    const session = await page.evaluate(() => client.connectionId);
    await page.goto(`${server.origin}/app/blank.html`);
    // Published while the page sleeps in the cache: delivered on return.
    await server.publish('bfcache', { type: 'data.test.n', payload: { n: 1 } });
    await page.goBack({ waitUntil: 'commit' });
    const back = Date.now();
    const shown = await page.evaluate(() => events.filter((e) => e.event == 'pageshow').map((e) => e.data.persisted));
    assert.deepEqual(shown, [false, true], 'the page came back from the back/forward cache');
    await waitActive(page, 1000);
    const connected = await connections(page);
    assert.equal(connected.length, 2);
    const { replayed, ...resumed } = connected[1];
    assert.deepEqual(resumed, { connectionId: session, resumed: true });
    // With a hub per core, the API's message may still be between hubs when the page is back:
    // then it comes live right after the resume instead of in its replay. Once either way.
    assert.ok(replayed <= 1, `replayed ${replayed}`);
    assert.ok(Date.now() - back < 1000);
    await waitFor(() => page.evaluate(() => messages.some((m) => m.payload.n == 1)), 'the message sent meanwhile');
    await page.waitForTimeout(300);
    assert.equal(await page.evaluate(() => messages.filter((m) => m.payload.n == 1).length), 1, 'once');
    const reasons = await page.evaluate(() => events.filter((e) => e.event == 'statechange').map((e) => e.data.reason));
    assert.ok(reasons.includes('page_hidden'), `reasons: ${reasons}`);
    await context.close();
  });

  for (const locks of [true, false]) {
    const how = locks ? 'Web Locks' : 'a BroadcastChannel question (no navigator.locks)';
    test(`a duplicated tab starts its own session and the original keeps its own (${how})`, async () => {
      const context = await browser.newContext();
      if (!locks) {
        await context.addInitScript(() => Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined }));
      }
      const original = await open(context, 'duplicate');
      const session = await original.evaluate(() => client.connectionId);
      await waitFor(
        () => original.evaluate(() => Object.keys(sessionStorage).some((k) => k.startsWith('switchboard:resume:'))),
        'a stored resume point',
      );
      const [copy] = await Promise.all([
        context.waitForEvent('page'),
        original.evaluate(() => window.open(location.href)),
      ]);
      await copy.waitForLoadState();
      await waitActive(copy);
      // The copy inherited the original's storage, resume point included, and did not use it.
      const copied = await copy.evaluate(() => ({ connected: events.filter((e) => e.event == 'connected').map((e) => e.data), tab: sessionStorage.getItem('switchboard:tab') }));
      assert.equal(copied.connected.length, 1);
      assert.equal(copied.connected[0].resumed, false);
      assert.notEqual(copied.connected[0].connectionId, session);
      assert.notEqual(copied.tab, await original.evaluate(() => sessionStorage.getItem('switchboard:tab')));
      // The original was not disturbed, and both receive what the conversation gets.
      await server.publish('duplicate', { type: 'data.test.n', payload: { n: 1 } });
      for (const page of [original, copy]) {
        await waitFor(() => page.evaluate(() => messages.length == 1), 'the message in both tabs');
      }
      const after = await original.evaluate(() => ({ id: client.connectionId, state: client.state, lost: events.filter((e) => e.event == 'disconnected').length }));
      assert.deepEqual(after, { id: session, state: 'active', lost: 0 });
      await context.close();
    });
  }

  test('a reload resumes the session where it was', async () => {
    const context = await browser.newContext();
    const page = await open(context, 'reload');
    const session = await page.evaluate(() => client.connectionId);
    await server.publish('reload', { type: 'data.test.n', payload: { n: 1 } });
    await waitFor(() => page.evaluate(() => messages.length == 1), 'the first message');
    await page.reload();
    await waitActive(page);
    const connected = await connections(page);
    assert.equal(connected.length, 1);
    assert.equal(connected[0].connectionId, session);
    assert.equal(connected[0].resumed, true);
    // The message seen before the reload is not delivered again; the next one continues the sequence.
    await server.publish('reload', { type: 'data.test.n', payload: { n: 2 } });
    await waitFor(() => page.evaluate(() => messages.length == 1), 'the next message');
    await page.waitForTimeout(200);
    assert.deepEqual(await page.evaluate(() => messages.map((m) => [m.payload.n, m.sequence])), [[2, 2]]);
    await context.close();
  });
});
