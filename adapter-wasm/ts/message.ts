import type { Envelope } from './types.js';

/**
 * Makes a protocol v1 envelope, e.g. for a local `bus.publish` of the application's own
 * events. (Messages for the server are built by the core: `client.send(type, payload)`.)
 */
export function createMessage<P = Record<string, unknown>>(
  type: string,
  payload: P,
  options: { id?: string; correlationId?: string; conversationId?: string } = {},
): Envelope<P> {
  return {
    id: options.id ?? crypto.randomUUID(),
    type,
    version: '1.0',
    timestamp: new Date().toISOString(),
    source: 'client',
    ...(options.conversationId === undefined ? {} : { conversationId: options.conversationId }),
    ...(options.correlationId === undefined ? {} : { correlationId: options.correlationId }),
    payload,
  };
}
