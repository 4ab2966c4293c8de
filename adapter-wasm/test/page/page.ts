// The browser tests' page (dist/test.html): the three entries as an application imports
// them, and a harness that records what a client does. With `?token=…` in the query it
// starts a client by itself, so a reload or a return from the back/forward cache runs the
// same code a real page would.
import { WebSocketClient, createMessage, type ClientEventMap, type ClientOptions, type Envelope } from '../../ts/index.js';
import '../../ts/status.js';
import { createLogger } from '../../ts/debug.js';

/** Everything a client emitted, in order. */
interface Recorded {
  event: keyof ClientEventMap | 'pageshow';
  data: unknown;
  at: number;
}

const events: Recorded[] = [];
const messages: Envelope[] = [];

/** Makes a client with the test's options (url defaults to this server's /ws) and records its events. */
function start(options: Partial<ClientOptions> & { debug?: boolean }): WebSocketClient {
  const client = new WebSocketClient({
    url: `ws://${location.host}/ws`,
    ...options,
    ...(options.debug ? { logger: createLogger() } : {}),
  });
  for (const event of ['connected', 'disconnected', 'error', 'message', 'statechange', 'gap'] as const) {
    client.on(event, (data) => events.push({ event, data, at: Date.now() }));
  }
  client.bus.subscribe('data.*', (message) => messages.push(message));
  document.querySelector('connection-status')!.client = client;
  Object.assign(window, { client });
  return client;
}

addEventListener('pageshow', (event) => {
  events.push({ event: 'pageshow', data: { persisted: event.persisted }, at: Date.now() });
});

Object.assign(window, { WebSocketClient, createMessage, createLogger, start, events, messages });

const query = new URLSearchParams(location.search);
const token = query.get('token');
if (token) {
  const options = JSON.parse(query.get('options') ?? '{}') as Partial<ClientOptions>;
  void start({ token, conversationId: query.get('conversation') ?? 'test', ...options })
    .connect()
    .catch(() => {});
}
