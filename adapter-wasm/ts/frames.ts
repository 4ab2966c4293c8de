import type { Core } from './switchboard_wasm.js';
import type { ClientEventMap } from './types.js';

/** Something a frame tells the application directly, beside what it tells the core. */
export type FrameNotice =
  | ['error', ClientEventMap['error']]
  | undefined;

type Json = Record<string, unknown>;
const number = (value: unknown) => (typeof value == 'number' ? value : NaN);
const text = (value: unknown) => (typeof value == 'string' ? value : '');
const optional = (value: unknown) => (typeof value == 'string' ? value : undefined);

/**
 * Feeds one text frame from the server to the core, decoded here: the browser's JSON parser
 * costs nothing, the core's would cost wasm. The core gets only what it decides with (ids,
 * sequence, what a system message says); an application message's frame text goes with it and
 * comes back in the `message` output. A `system.error` is for the application: it is
 * returned, and the core hears only that the socket is alive.
 */
export function feedFrame(core: Core, now: number, attempt: number, frame: string): FrameNotice {
  let message: Json;
  try {
    message = JSON.parse(frame) as Json;
    if (typeof message != 'object' || !message) throw 0;
  } catch {
    core.other(now, attempt);
    return ['error', { message: 'unreadable frame from the server' }];
  }
  const type = text(message['type']);
  const payload = (message['payload'] ?? {}) as Json;
  switch (type) {
    case 'system.connection.established':
      core.established(now, attempt, text(payload['connectionId']), number(payload['heartbeatIntervalMs']));
      return;
    case 'system.ping':
      core.ping(now, attempt, text(message['id']));
      return;
    case 'system.pong':
      core.pong(now, attempt, optional(message['correlationId']));
      return;
    case 'system.connection.resumed':
      core.resumed(now, attempt, optional(payload['connectionId']), number(payload['missedMessages']), payload['stateValid'] === true);
      return;
    case 'system.connection.close':
      core.closing(now, attempt, text(payload['reason']), number(payload['retryAfterMs']));
      return;
  }
  if (type.startsWith('system.')) {
    if (type == 'system.channel.reset') {
      core.channel_reset(now, attempt, text(payload['channel']));
      return;
    }
    core.other(now, attempt);
    if (type == 'system.error') return ['error', { error: payload as never }];
    return;
  }
  const position = (message['position'] ?? {}) as Json;
  const applied = core.application(
    now,
    attempt,
    text(message['id']),
    type,
    number(message['sequence']),
    frame,
    optional(position['channel']),
    optional(position['epoch']),
    number(position['offset']),
  );
  if (!applied) {
    core.other(now, attempt);
    return ['error', { message: `invalid message from the server (${type || 'no type'})` }];
  }
  return;
}
