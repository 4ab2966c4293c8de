import type { StorageLike } from './types.js';

/** What the core asks to keep so that a reloaded page can resume its session. */
export interface ResumePoint {
  connectionId: string | null;
  lastSequence: number;
  lastMessageId: string | null;
  /** The last position delivered per channel: any instance can replay from them. */
  positions?: { channel: string; epoch: string; offset: number }[];
}

/**
 * The resume point of one client (url + conversation) in one tab, in sessionStorage.
 *
 * Each record names the tab that wrote it: a duplicated tab, which inherits the storage but
 * gets an id of its own (see `tab.ts`), finds a record that is not its own and drops it.
 * Tokens are never stored. Storage may be missing, full or forbidden: every access is guarded,
 * and the worst outcome is a session that is not resumed.
 */
export class ResumeStore {
  #key: string;

  #storage: StorageLike;

  constructor(storage: StorageLike, url: string, conversationId: string | undefined) {
    this.#storage = storage;
    this.#key = `switchboard:resume:${url}#${conversationId ?? ''}`;
  }

  /** The point stored by this tab; null when there is none. */
  load(tab: string): ResumePoint | null {
    try {
      const text = this.#storage.getItem(this.#key);
      const point = text && JSON.parse(text);
      if (point?.tab == tab && typeof point.lastSequence == 'number') return point as ResumePoint;
      this.#storage.removeItem(this.#key);
    } catch {
      // Unreadable: start a new session.
    }
    return null;
  }

  save(tab: string, point: ResumePoint): void {
    try {
      if (point.connectionId) this.#storage.setItem(this.#key, JSON.stringify({ tab, ...point }));
      else this.#storage.removeItem(this.#key);
    } catch {
      // See the class docs.
    }
  }
}
