// The Phase 1 plan's frontend cases, by name, against a real server and a real browser.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { launchBrowser, openTestPage, startServer, waitActive } from './helpers.mjs';

describe('Phase 1 client cases', () => {
  let server;
  let browser;
  let context;

  before(async () => {
    // A fast heartbeat, so the server's pings arrive within the test.
    server = await startServer({ args: ['--heartbeat-interval', '1s'] });
    browser = await launchBrowser();
    context = await browser.newContext();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  /** The test page with a client that is not connected yet, and its sockets' frames. */
  async function page() {
    const p = await openTestPage(context, server);
    const sockets = [];
    p.on('websocket', (ws) => {
      const socket = { url: ws.url(), sent: [], received: [], closed: false };
      ws.on('framesent', (f) => socket.sent.push(JSON.parse(f.payload)));
      ws.on('framereceived', (f) => socket.received.push(JSON.parse(f.payload)));
      ws.on('close', () => (socket.closed = true));
      sockets.push(socket);
    });
    return { page: p, sockets };
  }

  test('test_connect_establishes_connection', async () => {
    const { page: p, sockets } = await page();
    const result = await p.evaluate(async (token) => {
      const client = start({ token, conversationId: 'phase1' });
      await client.connect();
      return { state: client.state, connectionId: client.connectionId };
    }, server.token);
    assert.equal(result.state, 'active');
    assert.match(result.connectionId, /^[0-9A-Z]{26}$/);
    assert.equal(sockets.length, 1);
    const established = sockets[0].received.find((m) => m.type == 'system.connection.established');
    assert.equal(established.payload.connectionId, result.connectionId);
    const states = await p.evaluate(() => events.filter((e) => e.event == 'statechange').map((e) => e.data.newState));
    assert.deepEqual(states, ['connecting', 'connected', 'active']);
    await p.close();
  });

  test('test_connect_includes_auth_token', async () => {
    const { page: p, sockets } = await page();
    await p.evaluate((token) => start({ token, conversationId: 'phase1' }).connect(), server.token);
    const url = new URL(sockets[0].url);
    assert.equal(url.pathname, '/ws');
    assert.equal(url.searchParams.get('token'), server.token);
    assert.equal(url.searchParams.get('conversation_id'), 'phase1');
    // The token is in the URL only: never in storage.
    const stored = await p.evaluate(() => JSON.stringify(sessionStorage) + JSON.stringify(localStorage));
    assert.ok(!stored.includes(server.token));
    await p.close();
  });

  test('test_send_serializes_message', async () => {
    const { page: p, sockets } = await page();
    const result = await p.evaluate(async (token) => {
      const client = start({ token, conversationId: 'phase1' });
      await client.connect();
      const relayed = new Promise((resolve) => client.bus.subscribeOnce('data.chat.say', resolve));
      const sent = client.send('data.chat.say', { text: 'hello', n: 1 });
      return { sent, relayed: await relayed };
    }, server.token);
    assert.equal(result.sent.status, 'sent');
    const frame = sockets[0].sent.find((m) => m.type == 'data.chat.say');
    assert.deepEqual(frame.payload, { text: 'hello', n: 1 });
    assert.equal(frame.id, result.sent.id);
    assert.equal(frame.version, '1.0');
    assert.equal(frame.source, 'client');
    assert.equal(frame.conversationId, 'phase1');
    assert.match(frame.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    // The server relays it back to the conversation, naming the sender and the original id.
    assert.equal(result.relayed.correlationId, result.sent.id);
    assert.equal(result.relayed.senderId, 'dev-user');
    assert.deepEqual(result.relayed.payload, { text: 'hello', n: 1 });
    await p.close();
  });

  test('test_auto_responds_to_ping', async () => {
    const { page: p, sockets } = await page();
    await p.evaluate((token) => start({ token, conversationId: 'phase1', pingInterval: 0 }).connect(), server.token);
    // The server pings every second; the client answers each with a pong naming it.
    await p.waitForTimeout(2500);
    const pings = sockets[0].received.filter((m) => m.type == 'system.ping');
    const pongs = sockets[0].sent.filter((m) => m.type == 'system.pong');
    assert.ok(pings.length >= 1, 'the server pinged');
    for (const ping of pings.slice(0, -1)) {
      assert.ok(
        pongs.some((pong) => pong.correlationId == ping.id),
        `no pong answers ping ${ping.id}`,
      );
    }
    assert.equal(await p.evaluate(() => client.state), 'active');
    await p.close();
  });

  test('test_disconnect_closes_socket', async () => {
    const { page: p, sockets } = await page();
    const result = await p.evaluate(async (token) => {
      const client = start({ token, conversationId: 'phase1' });
      await client.connect();
      client.disconnect();
      await new Promise((resolve) => setTimeout(resolve, 300));
      return { state: client.state, sent: client.send('data.chat.say', { text: 'late' }) };
    }, server.token);
    assert.equal(result.state, 'closed');
    assert.equal(result.sent.status, 'refused');
    assert.equal(sockets.length, 1);
    assert.ok(sockets[0].closed, 'the socket closed');
    // And stays closed: no reconnect.
    await p.waitForTimeout(1500);
    assert.equal(sockets.length, 1);
    await p.close();
  });

  test('getToken supplies the token, and is asked again when the server says it expired (4001)', async () => {
    const { page: p, sockets } = await page();
    const expired = server.mintToken('token-user', { expiresIn: -120 });
    const fresh = server.mintToken('token-user');
    const result = await p.evaluate(
      async ({ expired, fresh }) => {
        const grants = [{ token: expired, expiresAt: NaN }, fresh];
        let asked = 0;
        const client = start({ conversationId: 'phase1', getToken: async () => grants[asked++] });
        await client.connect();
        const relayed = new Promise((resolve) => client.bus.subscribeOnce('data.chat.say', resolve));
        client.send('data.chat.say', { text: 'hi' });
        return { asked, sender: (await relayed).senderId };
      },
      { expired, fresh },
    );
    assert.equal(result.asked, 2);
    assert.equal(result.sender, 'token-user');
    assert.equal(sockets.length, 2);
    assert.equal(new URL(sockets[0].url).searchParams.get('token'), expired);
    assert.equal(new URL(sockets[1].url).searchParams.get('token'), fresh);
    await p.close();
  });

  test('a getToken that fails backs off, asks again when due, and connects once it succeeds', async () => {
    const { page: p, sockets } = await page();
    const fresh = server.mintToken('token-user');
    const result = await p.evaluate(async (fresh) => {
      let asked = 0;
      const client = start({
        conversationId: 'phase1',
        reconnect: { baseMs: 200, maxMs: 200, jitter: 'none' },
        getToken: async () => {
          asked++;
          if (asked < 3) throw new Error('identity provider down');
          return fresh;
        },
      });
      await client.connect();
      const waits = events
        .filter((e) => e.event == 'statechange' && e.data.reason == 'token_unavailable')
        .map((e) => ({ state: e.data.newState, retry: e.data.nextRetryAt !== null }));
      const errors = events.filter((e) => e.event == 'error').map((e) => e.data.message);
      return { asked, waits, errors, state: client.state };
    }, fresh);
    assert.equal(result.asked, 3, 'asked once per attempt');
    assert.deepEqual(result.waits, [
      { state: 'reconnecting', retry: true },
      { state: 'reconnecting', retry: true },
    ]);
    assert.equal(result.errors.length, 2);
    assert.match(result.errors[0], /getToken failed: Error: identity provider down/);
    assert.equal(result.state, 'active');
    assert.equal(sockets.length, 1, 'no socket without a token');
    await p.close();
  });

  test('the MessageBus delivers by pattern in the core\'s order, once-subscriptions once, and forgets unsubscribed handlers', async () => {
    const { page: p } = await page();
    const badPattern = await p.evaluate(async (token) => {
      const client = start({ token, conversationId: 'bus' });
      window.busCalls = [];
      const on = (pattern, once = false) =>
        client.bus[once ? 'subscribeOnce' : 'subscribe'](pattern, (m) =>
          busCalls.push(`${pattern}${once ? ' once' : ''} ${m.payload.n}`),
        );
      // Subscribed before the core is loaded: registered in this order when it is.
      on('*');
      on('data.*');
      on('data.widget.submit');
      on('data.widget.*');
      on('control.*');
      on('data.widget.*', true);
      await client.connect();
      try {
        client.bus.subscribe('data.*.submit', () => {});
        return 'accepted';
      } catch (error) {
        return error.message;
      }
    }, server.token);
    assert.match(badPattern, /bad subscription pattern: data\.\*\.submit/);

    // From the server: the core orders the subscribers.
    await server.publish('bus', { type: 'data.widget.submit', payload: { n: 1 } });
    await server.publish('bus', { type: 'data.widget.submit', payload: { n: 2 } });
    await p.waitForFunction(() => messages.length == 2);
    assert.deepEqual(await p.evaluate(() => busCalls), [
      'data.widget.submit 1',
      'data.widget.* 1',
      'data.widget.* once 1',
      'data.* 1',
      '* 1',
      'data.widget.submit 2',
      'data.widget.* 2',
      'data.* 2',
      '* 2',
    ]);

    // Published locally (the application's own event); an unsubscribed handler is not called.
    const local = await p.evaluate(() => {
      busCalls.length = 0;
      const off = client.bus.subscribe('control.flow.pause', (m) => busCalls.push(`exact ${m.payload.n}`));
      client.bus.publish(createMessage('control.flow.pause', { n: 3 }));
      off();
      client.bus.publish(createMessage('control.flow.pause', { n: 4 }));
      return busCalls;
    });
    assert.deepEqual(local, ['exact 3', 'control.* 3', '* 3', 'control.* 4', '* 4']);
    await p.close();
  });

  test('test_emits_connection_events', async () => {
    const { page: p } = await page();
    const seen = await p.evaluate(async (token) => {
      const client = start({ token, conversationId: 'phase1' });
      await client.connect();
      client.disconnect(1000, 'bye');
      await new Promise((resolve) => setTimeout(resolve, 200));
      return events.filter((e) => e.event != 'pageshow').map((e) => [e.event, e.data]);
    }, server.token);
    const names = seen.map(([name]) => name);
    assert.deepEqual(names, ['statechange', 'statechange', 'statechange', 'connected', 'disconnected', 'statechange']);
    const connected = seen[3][1];
    assert.equal(connected.resumed, false);
    assert.deepEqual(seen[4][1], { code: 1000, reason: 'bye' });
    assert.equal(seen[5][1].newState, 'closed');
    assert.equal(seen[5][1].reason, 'disconnect');
    assert.equal(seen[5][1].willReconnect, false);
    await p.close();
  });
});
