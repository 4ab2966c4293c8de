/**
 * The wasm-bindgen glue of the client core (`dist/switchboard_wasm.js`, generated at build
 * time), declared by hand so that the TypeScript shell type-checks before the wasm is built
 * and the contract with `adapter-wasm/src/lib.rs` is written down in one place.
 *
 * Times are milliseconds: `now` is `performance.now()`, wall-clock times are `Date.now()`.
 * After every input the shell drains `poll()` until `undefined`, then re-arms its one timer
 * at `deadline()`.
 */
export class Core {
  /**
   * Strings are empty when absent. `numbers`, NaN for the core's default: heartbeatIntervalMs,
   * connectTimeoutMs, probeTimeoutMs, tokenRefreshLeadMs, queueMaxMessages, queueMaxBytes,
   * queueTtlMs, pingIntervalMs (0: none), reconnect baseMs, maxMs, maxAttempts, jitter (0 equal,
   * 1 full, 2 none, 3 proportional), jitterRatio.
   */
  constructor(
    url: string,
    conversationId: string,
    definitionId: string,
    token: string,
    cookieAuth: boolean,
    resume: boolean,
    numbers: Float64Array,
    seedHi: number,
    seedLo: number,
    now: number,
    unixMs: number,
  );
  restore_position(channel: string, epoch: string, offset: number): void;
  restore(connectionId: string, lastSequence: number, lastMessageId: string): void;
  connect(now: number): void;
  disconnect(now: number, code: number, reason: string): void;
  reconnect_now(now: number): void;
  socket_opened(now: number, attempt: number): void;
  // A frame from the server, decoded by the shell (JSON.parse) and fed by its type; numbers
  // that are absent are NaN.
  /** `system.connection.established`. */
  established(now: number, attempt: number, connectionId: string, heartbeatMs: number): void;
  /** `system.ping` with id `id`. */
  ping(now: number, attempt: number, id: string): void;
  /** `system.pong` answering `correlationId`. */
  pong(now: number, attempt: number, correlationId?: string | null): void;
  /** `system.connection.resumed`. */
  resumed(
    now: number,
    attempt: number,
    connectionId: string | null | undefined,
    missedMessages: number,
    stateValid: boolean,
  ): void;
  /** `system.connection.close` (the socket closes next). */
  closing(now: number, attempt: number, reason: string, retryAfterMs: number): void;
  /** `system.channel.reset`: messages on `channel` may be missing (the core emits a `gap`). */
  channel_reset(now: number, attempt: number, channel: string): void;
  /** Any other system message (it counts as life on the socket). */
  other(now: number, attempt: number): void;
  /**
   * An application message: id, type, sequence (NaN when absent), the frame as it arrived
   * (which the `message` output hands back) and its position in its channel (absent, or NaN
   * for the offset, when it has none). False for an invalid id or type (dropped).
   */
  application(
    now: number,
    attempt: number,
    id: string,
    type: string,
    sequence: number,
    frame: string,
    channel: string | undefined,
    epoch: string | undefined,
    offset: number,
  ): boolean;
  /** `code` is 0 when the socket closed without one. */
  socket_closed(now: number, attempt: number, code: number, reason: string): void;
  /** `expiresAtUnixMs` is NaN when unknown. */
  token(now: number, token: string, expiresAtUnixMs: number): void;
  /** The application's token callback failed: the core backs off and asks again when due. */
  token_failed(now: number): void;
  page(now: number, event: string): void;
  timeout(now: number): void;
  /** `{"id": …, "queued": false}` (sent), `{"id": …, "queued": true}` or `{"error": …}`. */
  send(
    now: number,
    type: string,
    payload: string,
    conversationId?: string | null,
    correlationId?: string | null,
  ): string;
  /** The subscription's number, or -1 for a bad pattern. */
  subscribe(pattern: string, once: boolean): number;
  unsubscribe(id: number): boolean;
  /**
   * The subscribers of a locally published message of `type`, in delivery order (one-time
   * subscriptions among them are removed).
   */
  publish(type: string): ArrayLike<number>;
  /** Monotonic ms, or NaN for never. */
  deadline(): number;
  /** The next output as JSON, or `undefined`. */
  poll(): string | undefined;
  status(): string;
  free(): void;
}

/** Fetches and instantiates the `.wasm` (once; later calls return the same instance). */
export default function init(options?: {
  module_or_path?: string | URL | Response | BufferSource | WebAssembly.Module;
}): Promise<{ memory: WebAssembly.Memory }>;
