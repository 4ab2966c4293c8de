// <connection-status> as a person (and a screen reader) meets it, and the debug logger.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { launchBrowser, openTestPage, startProxy, startServer, waitActive, waitFor } from './helpers.mjs';

describe('<connection-status> and the logger', () => {
  let server;
  let proxy;
  let browser;

  before(async () => {
    server = await startServer();
    proxy = await startProxy(server.port);
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await proxy?.stop().catch(() => {});
    await server?.close();
  });

  /** A page whose client (through the proxy, with a long backoff) is active. */
  async function activePage(context) {
    const page = await openTestPage(context, server);
    await page.evaluate(
      ({ token, url }) =>
        start({ token, url, conversationId: 'ui', reconnect: { baseMs: 30_000, jitter: 'none' } }).connect(),
      { token: server.token, url: proxy.wsUrl },
    );
    return page;
  }

  const element = (page) => page.locator('connection-status');

  test('the accessibility tree holds the state in words and a retry button; the ticking countdown stays out of the live region', async () => {
    const context = await browser.newContext();
    const page = await activePage(context);
    assert.equal(await element(page).ariaSnapshot(), '- status: Connected');

    // Count the live region's changes while the client reconnects and the countdown ticks.
    await page.evaluate(() => {
      window.liveChanges = [];
      const live = document.querySelector('connection-status [role=status]');
      new MutationObserver(() => liveChanges.push(live.textContent)).observe(live, { childList: true, characterData: true, subtree: true });
    });
    await proxy.stop();
    await waitFor(async () => (await element(page).getAttribute('tone')) == 'wait', 'yellow');
    const countdown = page.locator('connection-status').locator('[part=countdown]');
    const first = await countdown.textContent();
    await page.waitForTimeout(2100);
    assert.notEqual(await countdown.textContent(), first, 'the countdown ticks');
    assert.deepEqual(await page.evaluate(() => liveChanges), ['Reconnecting: connection lost'], 'one announcement');
    const snapshot = await element(page).ariaSnapshot();
    assert.match(snapshot, /- status: "?Reconnecting: connection lost"?/);
    assert.match(snapshot, /- button "Retry now"/);
    assert.doesNotMatch(snapshot, /retrying in/);
    await proxy.start();
    await context.close();
  });

  test('"Retry now" works from the keyboard', async () => {
    const context = await browser.newContext();
    const page = await activePage(context);
    await proxy.stop();
    await waitFor(async () => (await element(page).getAttribute('tone')) == 'wait', 'yellow');
    await proxy.start();
    // The next attempt is 30 s away: only the button brings the connection back now.
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => document.activeElement?.shadowRoot?.activeElement?.textContent);
    assert.equal(focused, 'Retry now');
    await page.keyboard.press('Enter');
    await waitActive(page, 5000);
    assert.equal(await element(page).getAttribute('tone'), 'ok');
    assert.equal(await element(page).ariaSnapshot(), '- status: Connected');
    await context.close();
  });

  test('motion stops under prefers-reduced-motion', async () => {
    const context = await browser.newContext();
    const page = await activePage(context);
    await proxy.stop();
    await waitFor(async () => (await element(page).getAttribute('tone')) == 'wait', 'yellow');
    const motion = () =>
      page.evaluate(() => {
        const style = getComputedStyle(document.querySelector('connection-status').shadowRoot.querySelector('[part=dot]'));
        return { animation: style.animationName, transition: style.transitionDuration };
      });
    await page.emulateMedia({ reducedMotion: 'no-preference' });
    assert.deepEqual(await motion(), { animation: 'pulse', transition: '0.4s, 0.4s' });
    await page.emulateMedia({ reducedMotion: 'reduce' });
    assert.deepEqual(await motion(), { animation: 'none', transition: '0s' });
    await proxy.start();
    await context.close();
  });

  test('localStorage.debug chooses which namespaces reach the console, payloads redacted', async () => {
    const context = await browser.newContext();
    const lines = async (filter) => {
      const page = await openTestPage(context, server);
      await page.evaluate((filter) => localStorage.setItem('debug', filter), filter);
      await page.reload();
      await page.waitForFunction(() => typeof window.start == 'function');
      const logged = [];
      page.on('console', (message) => logged.push(message.text()));
      await page.evaluate(async (token) => {
        const client = start({ token, conversationId: 'ui', debug: true });
        await client.connect();
        client.send('data.chat.say', { secret: 'hunter2' });
        await new Promise((resolve) => setTimeout(resolve, 300));
      }, server.token);
      await page.close();
      return logged;
    };

    const reconnectOnly = await lines('protocol:reconnect');
    assert.ok(reconnectOnly.length >= 3, 'state changes are logged');
    assert.ok(reconnectOnly.every((line) => / \[INFO\] \[protocol:reconnect\] /.test(line)), reconnectOnly.join('\n'));
    assert.match(reconnectOnly[0], /^\d{4}-\d\d-\d\dT[\d:.]+Z \[INFO\] \[protocol:reconnect\] disconnected → connecting/);

    const allButReconnect = await lines('protocol:*,-protocol:reconnect');
    assert.ok(allButReconnect.some((line) => line.includes('[protocol:client]')));
    assert.ok(allButReconnect.some((line) => line.includes('[protocol:bus]')));
    assert.ok(!allButReconnect.some((line) => line.includes('[protocol:reconnect]')));
    assert.ok(!allButReconnect.some((line) => line.includes('hunter2')), 'payloads are redacted');
    assert.ok(allButReconnect.some((line) => line.includes('[redacted]')));

    assert.deepEqual(await lines(''), []);
    await context.close();
  });
});
