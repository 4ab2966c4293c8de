// The demo page as a person uses it: two tabs on one conversation, messages both ways, the
// server stopped (yellow, a countdown) and started again (green; what was typed meanwhile is
// sent then, and arrives once). Leaves the README's screenshot in dist/demo.png.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { launchBrowser, startServer, waitFor } from './helpers.mjs';

const SCREENSHOT = join(fileURLToPath(new URL('.', import.meta.url)), '../dist/demo.png');

describe('the demo page', () => {
  let server;
  let browser;

  before(async () => {
    server = await startServer({ args: ['--shutdown-spread', '1s'] });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  const tone = (tab) => tab.locator('connection-status').getAttribute('tone');
  const lines = (tab) => tab.locator('#log li:not(.note)').allTextContents();
  const countdown = (tab) =>
    tab.evaluate(() => document.querySelector('connection-status').shadowRoot.querySelector('[part=countdown]').textContent);
  const say = async (tab, text) => {
    await tab.fill('#text', text);
    await tab.press('#text', 'Enter');
  };

  test('two tabs talk; a stopped server is yellow with a countdown; restarted, green, and what was typed meanwhile is sent and arrives once', async () => {
    const context = await browser.newContext({ viewport: { width: 720, height: 640 } });
    const url = `${server.origin}/app/demo.html?token=${server.token}&conversation=demo`;
    const tabs = [await context.newPage(), await context.newPage()];
    for (const tab of tabs) {
      await tab.goto(url);
      await waitFor(async () => (await tone(tab)) == 'ok', 'green');
    }
    await say(tabs[0], 'Hello from the first tab');
    await say(tabs[1], 'And hello from the second');
    for (const tab of tabs) {
      await waitFor(async () => (await lines(tab)).length == 2, 'both messages in both tabs');
    }

    await server.stop();
    for (const tab of tabs) await waitFor(async () => (await tone(tab)) == 'wait', 'yellow');
    // The first retries come after a second or so; wait for one far enough off to watch.
    const shown = async () => Number(/(\d+) s/.exec(await countdown(tabs[0]))?.[1] ?? 0);
    const first = await waitFor(async () => (await shown()) >= 2 && shown(), 'a countdown of 2 s or more', 30_000);
    await waitFor(async () => {
      const now = await shown();
      return now > 0 && now < first;
    }, 'the countdown to go down');
    await say(tabs[1], 'Typed while the server was down');

    await server.start();
    for (const tab of tabs) await waitFor(async () => (await tone(tab)) == 'ok', 'green again', 30_000);
    // The typed message was queued in the second tab and goes out once it is back; the relay
    // brings it back once. (The first tab gets it too if it rejoined first: the in-process hub
    // forgot the sessions when it stopped, so there is nothing to replay to a tab that came back
    // later, and that tab shows the gap note instead.)
    const typed = async (tab) =>
      (await lines(tab)).filter((line) => line.startsWith('Typed while the server was down')).length;
    await waitFor(async () => (await typed(tabs[1])) == 1, 'the queued message, relayed');
    await tabs[1].waitForTimeout(500);
    assert.equal(await typed(tabs[1]), 1, 'the message typed meanwhile arrives once');
    assert.ok((await typed(tabs[0])) <= 1, 'never twice in the other tab');
    // Mine on the right, theirs on the left.
    assert.equal(await tabs[1].locator('#log li.mine').count(), 2);
    assert.equal(await tabs[0].locator('#log li.mine').count(), 1);
    await tabs[1].screenshot({ path: SCREENSHOT });
    await context.close();
  });
});
