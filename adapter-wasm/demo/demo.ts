// The demo page: two tabs on one conversation, relaying `data.chat.say` through the dev
// server. Open /app/demo.html?token=…&conversation=demo (the dev server prints the token).
// The imports name the sources; the build points them at the built entries beside the page.
import { WebSocketClient, type Envelope } from '../ts/index.js';
import '../ts/status.js';
import { createLogger } from '../ts/debug.js';

const query = new URLSearchParams(location.search);
const token = query.get('token');
const conversationId = query.get('conversation') ?? 'demo';
const log = document.querySelector<HTMLUListElement>('#log')!;
const form = document.querySelector<HTMLFormElement>('#say')!;
const input = document.querySelector<HTMLInputElement>('#text')!;
document.querySelector('#conversation')!.textContent = `· ${conversationId}`;

/** Appends one line to the conversation, keeping the newest in view. */
function show(text: string, kind: '' | 'mine' | 'note' = '', at?: string): void {
  const item = document.createElement('li');
  item.className = kind;
  item.textContent = text;
  if (at) {
    const time = document.createElement('time');
    time.textContent = new Date(at).toLocaleTimeString();
    item.append(time);
  }
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

if (!token) {
  show('Open this page with ?token=… (the dev server prints one) and &conversation=demo.', 'note');
} else {
  const client = new WebSocketClient({
    url: `${location.protocol == 'https:' ? 'wss' : 'ws'}://${location.host}/ws`,
    token,
    conversationId,
    logger: createLogger(),
  });
  document.querySelector('connection-status')!.client = client;
  /** Ids of the messages this tab sent: their relays come back with them as correlationId. */
  const mine = new Set<string>();

  client.bus.subscribe('data.chat.*', (message: Envelope) => {
    const text = String(message.payload['text'] ?? '');
    show(text, mine.has(message.correlationId ?? '') ? 'mine' : '', message.timestamp);
  });
  client.on('connected', ({ resumed, replayed }) =>
    show(resumed ? `reconnected (${replayed} missed message(s) delivered)` : 'connected', 'note'),
  );
  client.on('gap', () => show('some messages may be missing (the server restarted)', 'note'));

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    const result = client.send('data.chat.say', { text });
    if (result.status == 'refused') show(`not sent: ${result.error}`, 'note');
    else if (result.id) mine.add(result.id);
    input.value = '';
  });
  client.connect().catch((error: Error) => show(`could not connect: ${error.message}`, 'note'));
}
