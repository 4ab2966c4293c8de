/**
 * The public types of the client: what the application gives it and what it hears back.
 * Every shape here mirrors a JSON object the wasm core emits (adapter-wasm/src/lib.rs), so the
 * shell passes them through without copying.
 */

/** The Phase 1 plan's client states. */
export type ConnectionState =
  | 'disconnected'
  | 'connecting'
  | 'connected'
  | 'active'
  | 'reconnecting'
  | 'closed';

/** A protocol v1 message, as received (or as made by {@link createMessage} for a local publish). */
export interface Envelope<P = Record<string, unknown>> {
  id: string;
  /** `{plane}.{category}.{action}`, e.g. `data.chat.say`. */
  type: string;
  version: string;
  /** ISO 8601 UTC with milliseconds. */
  timestamp: string;
  source: 'client' | 'server';
  conversationId?: string | null;
  /** On a reply or relay: the id of the message it answers. */
  correlationId?: string;
  /** On a relayed message: the user who sent it. */
  senderId?: string;
  payload: P;
  /** Per session, strictly increasing; absent on messages made locally. */
  sequence?: number;
}

/** A `system.error` payload. */
export interface ErrorPayload {
  category: string;
  code: string;
  message: string;
  details?: unknown;
  isRetryable: boolean;
  retryAfterMs?: number;
}

export interface StateChangeEvent {
  previousState: ConnectionState;
  newState: ConnectionState;
  /** Why, in snake_case: `connection_lost`, `offline`, `page_hidden`, `server_shutdown`, `max_attempts`, … */
  reason: string;
  code: number | null;
  attempt: number;
  /** Wall-clock ms (`Date.now()` scale) of the next attempt, or null when none is scheduled. */
  nextRetryAt: number | null;
  willReconnect: boolean;
}

export interface ConnectedEvent {
  connectionId: string;
  /** The previous session was resumed (and `replayed` messages were delivered again). */
  resumed: boolean;
  replayed: number;
}

export interface DisconnectedEvent {
  code: number | null;
  reason: string;
}

/** A server `system.error` (`error`), or a local failure (`message`, with `messageId` when a send failed). */
export interface ClientErrorEvent {
  error?: ErrorPayload;
  message?: string;
  messageId?: string;
}

/** Messages may have been lost: the application must fetch its state again. */
export interface GapEvent {
  /** `resume_refused`, `sequence_jump`, `channel_reset`, … */
  reason: string;
  /** The channel (`conversation:c-1`) when the server said which one: refetch that one. */
  channel?: string;
}

/** Event name → what its handlers receive. */
export interface ClientEventMap {
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  error: ClientErrorEvent;
  message: Envelope;
  statechange: StateChangeEvent;
  gap: GapEvent;
}

/** A snapshot of the connection, for a status display (`client.status`). */
export interface ConnectionStatus {
  state: ConnectionState;
  /** Attempts made since the connection was last active. */
  attempt: number;
  nextRetryAt: number | null;
  lastCloseCode: number | null;
  lastCloseReason: string | null;
  resumed: boolean;
  connectionId: string | null;
  lastSequence: number;
  /** Messages waiting to be sent. */
  queued: number;
  /** The last measured ping round trip. */
  roundTripMs: number | null;
  online: boolean;
}

/** What `send` did: handed to the socket, queued until the connection is active, or refused. */
export type SendResult =
  | { status: 'sent'; id: string }
  | { status: 'queued'; id?: string }
  | { status: 'refused'; error: string };

export interface SendOptions {
  /** Defaults to the client's conversation. */
  conversationId?: string;
  correlationId?: string;
}

/** A token and, when known, when it expires (wall-clock ms). */
export interface TokenGrant {
  token: string;
  expiresAt?: number;
}

export interface ReconnectOptions {
  /** First delay (1000 ms); doubled per attempt. */
  baseMs?: number;
  /** Longest delay (30 000 ms). */
  maxMs?: number;
  /** Attempts before giving up (10); `online`, `visible` and `reconnectNow()` start again. */
  maxAttempts?: number;
  /** `equal` (default: a fleet does not come back in a herd), `full`, `none`, or `proportional` ± `jitterRatio` (the Phase 1 plan's ±10 %). */
  jitter?: 'equal' | 'full' | 'none' | 'proportional';
  jitterRatio?: number;
}

/** Where the resume point is kept (sessionStorage by default; null: nowhere). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** A log level, from the most to the least verbose. */
export type LogLevel = 'DEBUG' | 'INFO' | 'WARN' | 'ERROR';

/**
 * A logger the client writes to when given one (`switchboard/debug` makes one): the client
 * asks `enabled` first, so a disabled namespace costs no formatting.
 */
export interface Logger {
  enabled(namespace: string): boolean;
  log(level: LogLevel, namespace: string, message: string, data?: unknown): void;
}

export interface ClientOptions {
  /** The endpoint, e.g. `wss://host/ws`, without a query: the client adds token and conversation. */
  url: string;
  /** A token for the client's whole life. */
  token?: string;
  /**
   * Asked for a token before each connect and before the current one expires (one call at a
   * time). A JWT's `exp` is read when no `expiresAt` is given.
   */
  getToken?: () => string | TokenGrant | Promise<string | TokenGrant>;
  /** No token at all: a cookie authenticates the socket. */
  cookieAuth?: boolean;
  conversationId?: string;
  definitionId?: string;
  reconnect?: ReconnectOptions;
  /** The server's ping interval until it says otherwise (ms). */
  heartbeatInterval?: number;
  /** How long a socket may take to open and be established (ms). */
  connectTimeout?: number;
  /** How long a liveness probe may go unanswered (ms). */
  probeTimeout?: number;
  /** Ask `getToken` for a fresh token this long before the current one expires (ms). */
  tokenRefreshLead?: number;
  /** How often an active client measures the round trip (ms; 0: only probes measure it). */
  pingInterval?: number;
  /** Resume the previous session after a reconnect or reload (default true). */
  resume?: boolean;
  /** Bounds of the queue of messages sent while not active. */
  queue?: { maxMessages?: number; maxBytes?: number; ttlMs?: number };
  storage?: StorageLike | null;
  logger?: Logger;
  /** Where the `.wasm` is (default: beside the glue module). */
  wasmUrl?: string | URL;
}
