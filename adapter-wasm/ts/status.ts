/**
 * `<connection-status>` (entry `switchboard/status`): a dot and a sentence for a client's
 * connection, from its `statechange` events. Green: active. Yellow: connecting or
 * reconnecting, with a countdown to the next attempt. Red: closed or offline, with the reason.
 *
 * Accessibility: the sentence is the element's only live region (`role="status"`, in the
 * light DOM, where Chrome announces reliably) and changes only with the state; the ticking
 * countdown and the round-trip figure are `aria-hidden`. "Retry now" is a real button.
 * Motion stops under `prefers-reduced-motion`. With the `quality` attribute it also shows the
 * measured ping round trip (`data-quality` good/fair/poor on that part). Theme with `--connection-status-ok`, `-wait`,
 * `-fail`, `-idle` and the parts `dot`, `countdown`, `quality`, `retry`.
 *
 *   import 'switchboard/status';
 *   document.querySelector('connection-status').client = client;
 */
import type { ConnectionStatus, StateChangeEvent } from './types.js';

/** What the element needs of a client (`WebSocketClient` is one). */
export interface StatusSource {
  readonly status: ConnectionStatus;
  on(event: 'statechange', handler: (event: StateChangeEvent) => void): () => void;
  reconnectNow(): void;
}

const STATES: Record<string, string> = {
  active: 'Connected',
  connecting: 'Connecting',
  connected: 'Connecting',
  reconnecting: 'Reconnecting',
  closed: 'Disconnected',
  disconnected: 'Not connected',
};

/** Close codes that say more than the reason (`do_not_reconnect`) does. */
const CODES: Record<number, string> = {
  4000: 'authentication failed',
  4001: 'the sign-in expired',
  4002: 'not allowed',
  4003: 'conversation not found',
};

const REASONS: Record<string, string> = {
  max_attempts: 'gave up after too many attempts',
  server_shutdown: 'the server is restarting',
  do_not_reconnect: 'refused by the server',
  token_rejected: 'the sign-in expired',
};

const CSS =
  ':host{display:inline-flex;align-items:center;gap:.5em}' +
  '[part=dot]{width:.7em;height:.7em;border-radius:50%;background:var(--connection-status-idle,#8c959f);transition:background-color .4s,transform .4s}' +
  ':host([tone=ok]) [part=dot]{background:var(--connection-status-ok,#1a7f37)}' +
  ':host([tone=wait]) [part=dot]{background:var(--connection-status-wait,#bf8700);animation:pulse 1s infinite alternate}' +
  ':host([tone=fail]) [part=dot]{background:var(--connection-status-fail,#cf222e)}' +
  '@keyframes pulse{to{transform:scale(.6)}}' +
  '@media (prefers-reduced-motion:reduce){[part=dot]{transition:none;animation:none!important}}' +
  '[part=countdown],[part=quality]{opacity:.7}[hidden]{display:none}';

export class ConnectionStatusElement extends HTMLElement {
  #source: StatusSource | undefined;
  #stop: (() => void) | undefined;
  #live: HTMLElement | undefined;
  #parts: Record<'countdown' | 'quality' | 'retry', HTMLElement> | undefined;
  #retryAt: number | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;

  /** The client whose state is shown. */
  get client(): StatusSource | undefined {
    return this.#source;
  }

  set client(client: StatusSource | undefined) {
    this.#stop?.();
    this.#source = client;
    if (this.isConnected) this.#listen();
  }

  attach(client: StatusSource): void {
    this.client = client;
  }

  connectedCallback(): void {
    if (!this.#live) {
      const shadow = this.attachShadow({ mode: 'open' });
      shadow.innerHTML = `<style>${CSS}</style><span part="dot"></span><slot></slot><span part="countdown" aria-hidden="true"></span><span part="quality" aria-hidden="true"></span><button part="retry" type="button" hidden>Retry now</button>`;
      const part = (name: string) => shadow.querySelector<HTMLElement>(`[part=${name}]`)!;
      this.#parts = { countdown: part('countdown'), quality: part('quality'), retry: part('retry') };
      this.#parts.retry.onclick = () => this.#source?.reconnectNow();
      this.#live = document.createElement('span');
      this.#live.setAttribute('role', 'status');
      this.append(this.#live);
    }
    this.#listen();
  }

  disconnectedCallback(): void {
    this.#stop?.();
    this.#stop = undefined;
    clearTimeout(this.#timer);
  }

  #listen(): void {
    const source = this.#source;
    if (!source || !this.#live) return;
    this.#stop?.();
    this.#stop = source.on('statechange', (event) => this.#render(event));
    // Until the first statechange: the snapshot says as much.
    const { state, lastCloseReason, lastCloseCode, nextRetryAt, online } = source.status;
    const down = state == 'reconnecting' || state == 'closed';
    const reason = !down ? '' : !online ? 'offline' : (lastCloseReason ?? '');
    this.#render({ newState: state, reason, code: lastCloseCode, nextRetryAt });
  }

  #render(event: Pick<StateChangeEvent, 'newState' | 'reason' | 'code' | 'nextRetryAt'>): void {
    const { newState, reason, code, nextRetryAt } = event;
    const offline = reason == 'offline';
    const tone =
      newState == 'active' ? 'ok' : newState == 'closed' || offline ? 'fail' : newState == 'disconnected' ? 'idle' : 'wait';
    // Why, in words, for a connection that is down (not for one closed on purpose).
    const down = (newState == 'reconnecting' || newState == 'closed') && reason != 'disconnect';
    const why = !down ? '' : offline ? 'offline' : (CODES[code!] ?? REASONS[reason] ?? reason.replace(/_/g, ' '));
    const text = STATES[newState] + (why ? `: ${why}` : '');
    this.setAttribute('state', newState);
    this.setAttribute('tone', tone);
    // Only a new sentence is announced: the same one is not written again.
    if (this.#live!.textContent != text) this.#live!.textContent = text;
    this.#parts!.retry.hidden = !down;
    this.#retryAt = nextRetryAt;
    this.#tick();
  }

  /** Updates the countdown and the round trip once a second while either is shown. */
  #tick(): void {
    clearTimeout(this.#timer);
    const { countdown, quality } = this.#parts!;
    const left = this.#retryAt && Math.ceil((this.#retryAt - Date.now()) / 1000);
    countdown.textContent = left && left > 0 ? `retrying in ${left} s` : '';
    const status = this.#source?.status;
    const active = status?.state == 'active' && this.hasAttribute('quality');
    const rtt = active ? status.roundTripMs : null;
    quality.textContent = rtt == null ? '' : `${rtt} ms`;
    quality.dataset.quality = rtt == null ? '' : rtt < 150 ? 'good' : rtt < 500 ? 'fair' : 'poor';
    if ((left && left > 0) || active) this.#timer = setTimeout(() => this.#tick(), 1000);
  }
}

if (!customElements.get('connection-status')) customElements.define('connection-status', ConnectionStatusElement);

declare global {
  interface HTMLElementTagNameMap {
    'connection-status': ConnectionStatusElement;
  }
}
