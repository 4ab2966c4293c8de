import { MessageBus } from './bus.js';
import { Emitter } from './emitter.js';
import { feedFrame } from './frames.js';
import { watchPage } from './page.js';
import { ResumeStore, type ResumePoint } from './resume-store.js';
import { Sockets } from './sockets.js';
import type { Core } from './switchboard_wasm.js';
import { tabId } from './tab.js';
import type {
  ClientEventMap,
  ClientOptions,
  ConnectedEvent,
  ConnectionState,
  ConnectionStatus,
  DisconnectedEvent,
  Envelope,
  ErrorPayload,
  GapEvent,
  Logger,
  SendOptions,
  SendResult,
  StateChangeEvent,
  StorageLike,
  TokenGrant,
} from './types.js';
import { loadCore } from './wasm.js';

/** An input for the core, fed with the current monotonic time. */
type Input<T> = (core: Core, now: number) => T;

/** One output of the core (adapter-wasm/src/lib.rs, `Core::encode`). */
type Output =
  | { t: 'open'; attempt: number; url: string }
  | { t: 'send'; attempt: number; frame: string }
  | { t: 'close'; attempt: number; code: number; reason: string }
  | { t: 'token' }
  | ({ t: 'persist' } & ResumePoint)
  | ({ t: 'connected' } & ConnectedEvent)
  | ({ t: 'disconnected' } & DisconnectedEvent)
  | { t: 'error'; error?: ErrorPayload; message?: string }
  | { t: 'message'; frame: string; subscribers: number[] }
  | ({ t: 'statechange' } & StateChangeEvent)
  | ({ t: 'gap' } & GapEvent)
  | { t: 'sendFailed'; id: string; error: string };

const now = () => performance.now();
/** setTimeout's longest delay; a later deadline is simply re-checked then. */
const MAX_DELAY = 2 ** 31 - 1;

/**
 * A WebSocket connection to switchboard that survives socket losses, page hides and network
 * changes, and resumes its session without losing a message.
 *
 * This class is the shell around the wasm client core: it owns what only a browser has (the
 * WebSocket, one timer, the clocks, page lifecycle events, storage, the application's token
 * callback) and feeds each to the core as an input; the core makes every decision. After
 * every input it drains the core's outputs in order, carrying out socket and storage work at
 * once and queueing the application's callbacks, which run after the drain (so a handler may
 * call `send` or `disconnect`), then re-arms its one timer at the core's next deadline.
 */
export class WebSocketClient extends Emitter<ClientEventMap> {
  /** Handlers by message type pattern; the core orders them. */
  readonly bus = new MessageBus();

  #core: Core | undefined;
  #starting: Promise<Core> | undefined;
  /** This tab's id (see tab.ts), once verified: resume points are stored under it. */
  #tabClaim: Promise<string> | undefined;
  #tabId: string | undefined;
  #store: ResumeStore | undefined;
  #sockets: Sockets;
  /** Whether the application wants a connection (connect() more recently than disconnect()). */
  #wanted = false;
  #currentState: ConnectionState = 'disconnected';
  #id: string | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** Bumped by disconnect(): a token that arrives for an older generation is dropped. */
  #generation = 0;
  /** Inputs that arose while draining (a socket the browser refused at once). */
  #inbox: Input<void>[] = [];
  /** Application callbacks, run in order after the drain. */
  #later: (() => void)[] = [];
  #dispatching = false;
  #waiters: [() => void, (error: Error) => void][] = [];
  /** Stops listening to page events (while connect() is wanted, the client listens). */
  #unwatch: (() => void) | undefined;

  #options: ClientOptions;

  constructor(options: ClientOptions) {
    super();
    this.#options = options;
    const storage = options.storage === undefined ? sessionStorageOrNull() : options.storage;
    if (storage) {
      this.#store = new ResumeStore(storage, options.url, options.conversationId);
      this.#tabClaim = tabId(storage);
    }
    this.#sockets = new Sockets({
      opened: (attempt) => this.#feed((core, t) => core.socket_opened(t, attempt)),
      frame: (attempt, text) => {
        this.#logs('protocol:client')?.log('DEBUG', 'protocol:client', `← ${typeOf(text)}`, text);
        this.#feed((core, t) => {
          const notice = feedFrame(core, t, attempt, text);
          if (notice) this.#later.push(() => this.emit(notice[0], notice[1] as never));
        });
      },
      closed: (attempt, code, reason) =>
        this.#feed((core, t) => core.socket_closed(t, attempt, code, reason)),
    });
  }

  /** The Phase 1 plan's state: disconnected, connecting, connected, active, reconnecting, closed. */
  get state(): ConnectionState {
    return this.#currentState;
  }

  /** The session's id once established (it stays the same across resumed reconnects). */
  get connectionId(): string | null {
    return this.#id;
  }

  /** A snapshot for a status display (state, attempt, next retry, last close, queue, round trip, …). */
  get status(): ConnectionStatus {
    if (this.#core) return JSON.parse(this.#core.status()) as ConnectionStatus;
    return {
      state: this.#currentState,
      attempt: 0,
      nextRetryAt: null,
      lastCloseCode: null,
      lastCloseReason: null,
      resumed: false,
      connectionId: null,
      lastSequence: 0,
      queued: 0,
      roundTripMs: null,
      online: navigator.onLine,
    };
  }

  /**
   * Connects (loading the wasm core on first use). Resolves when the connection is first
   * active; rejects if the client is closed for good before (a refused token, the attempt
   * limit, `disconnect()`).
   */
  connect(): Promise<void> {
    this.#wanted = true;
    const active = new Promise<void>((resolve, reject) => {
      if (this.#currentState == 'active') resolve();
      else this.#waiters.push([resolve, reject]);
    });
    this.#start().then(
      () => {
        if (!this.#wanted) return;
        this.#watch();
        this.#feed((core, t) => core.connect(t));
      },
      (error: unknown) => this.#settle(error instanceof Error ? error : new Error(String(error))),
    );
    return active;
  }

  /** Closes for good (no reconnect) and forgets the session. */
  disconnect(code = 1000, reason = 'client disconnect'): void {
    this.#wanted = false;
    this.#generation++;
    // A closed client needs no page events (and a forgotten one is not kept alive by them).
    this.#unwatch?.();
    this.#unwatch = undefined;
    if (this.#core) this.#feed((core, t) => core.disconnect(t, code, reason));
    else this.#settle(new Error('disconnect'));
  }

  /** Tries again now, with a fresh attempt count (a "retry now" button). */
  reconnectNow(): void {
    if (!this.#core) return;
    this.#wanted = true;
    this.#watch();
    this.#feed((core, t) => core.reconnect_now(t));
  }

  /** Feeds page lifecycle events to the core from now on (once). */
  #watch(): void {
    this.#unwatch ??= watchPage((event) => this.#feed((core, t) => core.page(t, event)));
  }

  /**
   * Sends a message to the server: `sent` (handed to the socket), `queued` (the connection is
   * not active; it goes out in order once it is, or comes back as an `error` event), or
   * `refused` (closed, queue full, bad type).
   */
  send(type: string, payload: object = {}, options: SendOptions = {}): SendResult {
    if (!this.#core) {
      if (!this.#wanted) return { status: 'refused', error: 'not connected' };
      // The core is loading: it takes the message as soon as it exists.
      this.#start().then(() => this.send(type, payload, options));
      return { status: 'queued' };
    }
    const json = JSON.stringify(payload);
    const result = JSON.parse(
      this.#feed((core, t) =>
        core.send(t, type, json, options.conversationId, options.correlationId),
      )!,
    ) as { id?: string; queued?: boolean; error?: string };
    if (result.error !== undefined) return { status: 'refused', error: result.error };
    return { status: result.queued ? 'queued' : 'sent', id: result.id! };
  }

  /** Creates the core once: the wasm, this tab's identity and its resume point, page events. */
  #start(): Promise<Core> {
    return (this.#starting ??= (async () => {
      const [glue, tab] = await Promise.all([loadCore(this.#options.wasmUrl), this.#tabClaim]);
      const seed = crypto.getRandomValues(new Uint32Array(2));
      const core = new glue.Core(...coreOptions(this.#options), seed[0]!, seed[1]!, now(), Date.now());
      const stored = tab && this.#store?.load(tab);
      if (stored) {
        for (const p of stored.positions ?? []) core.restore_position(p.channel, p.epoch, p.offset);
        core.restore(stored.connectionId ?? '', stored.lastSequence, stored.lastMessageId ?? '');
      }
      this.#tabId = tab;
      this.#core = core;
      try {
        this.bus.attach(core);
      } catch (error) {
        this.#later.push(() => this.emit('error', { message: String(error) }));
      }
      if (!navigator.onLine) this.#feed((c, t) => c.page(t, 'offline'));
      return core;
    })().catch((error: unknown) => {
      this.#starting = undefined;
      throw error;
    }));
  }

  /** Feeds one input, drains the outputs, runs the callbacks, re-arms the timer. */
  #feed<T>(input: Input<T>): T | undefined {
    const core = this.#core;
    if (!core) return undefined;
    const result = input(core, now());
    this.#drain(core);
    for (let next; (next = this.#inbox.shift()); ) {
      next(core, now());
      this.#drain(core);
    }
    this.#dispatch();
    this.#arm(core);
    return result;
  }

  #drain(core: Core): void {
    for (let text; (text = core.poll()) !== undefined; ) this.#carryOut(JSON.parse(text) as Output);
  }

  /** Carries out one output: sockets and storage now, the application's callbacks later. */
  #carryOut(output: Output): void {
    const log = this.#logs('protocol:client');
    switch (output.t) {
      case 'open':
        log?.log('INFO', 'protocol:client', `opening socket ${output.attempt} to ${output.url.split('?')[0]}`);
        if (!this.#sockets.open(output.attempt, output.url)) {
          const { attempt } = output;
          this.#inbox.push((core, t) => core.socket_closed(t, attempt, 0, 'refused'));
        }
        return;
      case 'send':
        log?.log('DEBUG', 'protocol:client', `→ ${typeOf(output.frame)}`, output.frame.includes('"system.auth.refresh"') ? undefined : output.frame);
        this.#sockets.send(output.attempt, output.frame);
        return;
      case 'close':
        log?.log('DEBUG', 'protocol:client', `closing socket ${output.attempt}: ${output.code} ${output.reason}`);
        this.#sockets.close(output.attempt, output.code, output.reason);
        return;
      case 'token':
        this.#later.push(() => void this.#fetchToken());
        return;
      case 'persist': {
        const { t, ...point } = output;
        if (this.#tabId) this.#store?.save(this.#tabId, point);
        return;
      }
      case 'statechange':
        this.#currentState = output.newState;
        this.#logs('protocol:reconnect')?.log(
          output.newState == 'closed' ? 'WARN' : 'INFO',
          'protocol:reconnect',
          `${output.previousState} → ${output.newState} (${output.reason}${output.code ? ` ${output.code}` : ''})${output.nextRetryAt ? `, next attempt in ${Math.round(output.nextRetryAt - Date.now())} ms` : ''}`,
        );
        break;
      case 'connected':
        this.#id = output.connectionId;
        break;
      case 'message': {
        const { subscribers } = output;
        const envelope = JSON.parse(output.frame) as Envelope;
        this.#logs('protocol:bus')?.log('DEBUG', 'protocol:bus', `${envelope.type} → ${subscribers.length} subscriber(s)`, envelope.payload);
        this.#later.push(() => {
          this.emit('message', envelope);
          this.bus.deliver(envelope, subscribers);
        });
        return;
      }
      case 'sendFailed': {
        const { id, error } = output;
        this.#later.push(() => this.emit('error', { message: error, messageId: id }));
        return;
      }
      case 'error':
      case 'gap':
        log?.log('WARN', 'protocol:client', `${output.t}: ${output.t == 'gap' ? output.reason : (output.error?.message ?? output.message)}`);
    }
    const { t, ...event } = output;
    this.#later.push(() => {
      this.emit(t, event as never);
      if (t == 'statechange') {
        const { newState, reason } = event as StateChangeEvent;
        if (newState == 'active') this.#settle();
        if (newState == 'closed') this.#settle(new Error(reason));
      }
    });
  }

  /** Runs queued callbacks in order; a callback's own inputs append to the same queue. */
  #dispatch(): void {
    if (this.#dispatching) return;
    this.#dispatching = true;
    try {
      for (let next; (next = this.#later.shift()); ) next();
    } finally {
      this.#dispatching = false;
    }
  }

  /** The one timer, at the core's deadline. */
  #arm(core: Core): void {
    clearTimeout(this.#timer);
    const at = core.deadline();
    if (!(at >= 0)) return;
    this.#timer = setTimeout(
      () => this.#feed((c, t) => c.timeout(t)),
      Math.min(MAX_DELAY, Math.max(0, at - now())),
    );
  }

  /** Asks the application for a token (the core asks once at a time) and feeds it. */
  async #fetchToken(): Promise<void> {
    const generation = this.#generation;
    this.#logs('protocol:client')?.log('DEBUG', 'protocol:client', 'asking the application for a token');
    try {
      if (!this.#options.getToken) throw new Error('no getToken option');
      const grant: string | TokenGrant = await this.#options.getToken();
      const { token, expiresAt = jwtExpiry(token) } = typeof grant == 'string' ? { token: grant } : grant;
      if (generation == this.#generation) this.#feed((core, t) => core.token(t, token, expiresAt ?? NaN));
    } catch (error) {
      if (generation != this.#generation) return;
      this.emit('error', { message: `getToken failed: ${String(error)}` });
      // The core backs off (or gives up after the attempt limit) and asks again when due.
      this.#feed((core, t) => core.token_failed(t));
    }
  }

  /** Resolves (or rejects) the promises of pending `connect()` calls. */
  #settle(error?: Error): void {
    for (const [resolve, reject] of this.#waiters.splice(0)) {
      if (error) reject(error);
      else resolve();
    }
  }

  /** The logger, if `namespace` is enabled: callers write `this.#logs(ns)?.log(…)`, so nothing is formatted otherwise. */
  #logs(namespace: string): Logger | undefined {
    const logger = this.#options.logger;
    return logger?.enabled(namespace) ? logger : undefined;
  }
}

/** The jitter names, by the number the core takes (0: `equal`, the default). */
const JITTERS = ['equal', 'full', 'none', 'proportional'];

/** The core's constructor arguments before the seed (see `Core` in switchboard_wasm.d.ts). */
function coreOptions(o: ClientOptions): [string, string, string, string, boolean, boolean, Float64Array] {
  const r = o.reconnect ?? {};
  const numbers = [
    o.heartbeatInterval,
    o.connectTimeout,
    o.probeTimeout,
    o.tokenRefreshLead,
    o.queue?.maxMessages,
    o.queue?.maxBytes,
    o.queue?.ttlMs,
    o.pingInterval,
    r.baseMs,
    r.maxMs,
    r.maxAttempts,
    JITTERS.indexOf(r.jitter ?? 'equal'),
    r.jitterRatio,
  ];
  return [
    o.url,
    o.conversationId ?? '',
    o.definitionId ?? '',
    o.token ?? '',
    // No token and no way to get one: the socket must be authenticated by a cookie.
    o.cookieAuth ?? (!o.token && !o.getToken),
    o.resume ?? true,
    Float64Array.from(numbers, (n) => n ?? NaN),
  ];
}

/** A JWT's `exp` in ms, when the token is one. */
function jwtExpiry(token: string): number | undefined {
  try {
    const claims = JSON.parse(atob(token.split('.')[1]!.replace(/-/g, '+').replace(/_/g, '/')));
    return typeof claims.exp == 'number' ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** A frame's message type, for logs. */
function typeOf(frame: string): string {
  return /"type":"([^"]*)"/.exec(frame)?.[1] ?? 'frame';
}

function sessionStorageOrNull(): StorageLike | null {
  try {
    return sessionStorage;
  } catch {
    return null;
  }
}
