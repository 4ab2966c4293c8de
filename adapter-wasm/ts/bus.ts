import type { Core } from './switchboard_wasm.js';
import type { Envelope } from './types.js';
import { invoke } from './emitter.js';

/** A bus handler. */
export type MessageHandler = (message: Envelope) => void;

interface Subscription {
  pattern: string;
  once: boolean;
  handler: MessageHandler;
  /** The core's number for it, once the core exists. */
  id?: number;
}

/**
 * The MessageBus: handlers by type pattern (`data.widget.*`, `control.*`, an exact type, `*`).
 *
 * The core keeps the patterns and decides which subscribers get a message and in what order
 * (exact first, then the most specific pattern, `*` last); this side only keeps the handlers,
 * in a Map by the core's subscription number, and forgets a handler as soon as it is
 * unsubscribed or, for `subscribeOnce`, has run. Subscriptions made before the core is loaded
 * wait in a list and are registered, in order, when it is.
 */
export class MessageBus {
  #core: Core | undefined;
  #live = new Map<number, Subscription>();
  #waiting: Subscription[] = [];
  /** Local publishes made before the core was loaded. */
  #published: Envelope[] = [];

  /** Calls `handler` for every message whose type matches `pattern`; returns the unsubscribe function. */
  subscribe(pattern: string, handler: MessageHandler): () => void {
    return this.#add({ pattern, handler, once: false });
  }

  /** Like `subscribe`, for the first matching message only. */
  subscribeOnce(pattern: string, handler: MessageHandler): () => void {
    return this.#add({ pattern, handler, once: true });
  }

  /**
   * Delivers one of the application's own messages to the local subscribers (nothing goes to
   * the server: that is `client.send`).
   */
  publish(message: Envelope): void {
    if (!this.#core) {
      // The core orders subscribers: a publish before it is loaded runs once it is.
      this.#published.push(message);
      return;
    }
    this.#run(
      Array.from(this.#core.publish(message.type), (id) => this.#live.get(id)),
      message,
    );
  }

  /** Hands the bus to the core; subscriptions made before are registered now. A bad pattern throws. */
  attach(core: Core): void {
    this.#core = core;
    const bad = this.#waiting.filter((s) => !this.#register(s)).map((s) => s.pattern);
    this.#waiting = [];
    for (const message of this.#published.splice(0)) this.publish(message);
    if (bad.length) throw new TypeError(`bad subscription pattern: ${bad.join(', ')}`);
  }

  /** Runs the handlers of a message the core delivered to subscribers `ids`, in that order. */
  deliver(message: Envelope, ids: number[]): void {
    this.#run(
      ids.map((id) => this.#live.get(id)),
      message,
    );
  }

  #add(subscription: Subscription): () => void {
    if (!this.#core) this.#waiting.push(subscription);
    else if (!this.#register(subscription)) {
      throw new TypeError(`bad subscription pattern: ${subscription.pattern}`);
    }
    return () => this.#remove(subscription);
  }

  #register(subscription: Subscription): boolean {
    const id = this.#core!.subscribe(subscription.pattern, subscription.once);
    if (id < 0) return false;
    subscription.id = id;
    this.#live.set(id, subscription);
    return true;
  }

  #remove(subscription: Subscription): void {
    const { id } = subscription;
    if (id === undefined) this.#waiting = this.#waiting.filter((s) => s !== subscription);
    else if (this.#live.delete(id)) this.#core?.unsubscribe(id);
  }

  #run(subscriptions: (Subscription | undefined)[], message: Envelope): void {
    for (const subscription of subscriptions) {
      if (!subscription) continue;
      // The core already dropped a one-time subscription it delivered to.
      if (subscription.once && subscription.id !== undefined) this.#live.delete(subscription.id);
      invoke(subscription.handler, message);
    }
  }
}
