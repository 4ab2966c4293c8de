/**
 * switchboard's browser client: `new WebSocketClient({url, getToken, conversationId})`.
 * The `<connection-status>` element is in `switchboard/status`, the logger in
 * `switchboard/debug`; neither is imported here, so the client bundle carries neither.
 */
export { WebSocketClient } from './client.js';
export { MessageBus, type MessageHandler } from './bus.js';
export { createMessage } from './message.js';
export type * from './types.js';
