/**
 * A minimal typed event emitter. Handlers are kept in a Set per event so removing one is O(1)
 * and a handler added twice runs once.
 */
export class Emitter<Events> {
  #handlers = new Map<keyof Events, Set<(value: never) => void>>();

  /** Adds a handler; returns a function that removes it. */
  on<K extends keyof Events>(event: K, handler: (value: Events[K]) => void): () => void {
    let set = this.#handlers.get(event);
    if (!set) this.#handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => this.off(event, handler);
  }

  off<K extends keyof Events>(event: K, handler: (value: Events[K]) => void): void {
    this.#handlers.get(event)?.delete(handler);
  }

  /** Calls every handler of `event`; one that throws is reported and does not stop the rest. */
  protected emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const handler of [...(this.#handlers.get(event) ?? [])]) {
      invoke(handler as (value: Events[K]) => void, value);
    }
  }
}

/** Calls application code; an exception goes to the page's error reporting, not to the caller. */
export function invoke<T>(handler: (value: T) => void, value: T): void {
  try {
    handler(value);
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
  }
}
