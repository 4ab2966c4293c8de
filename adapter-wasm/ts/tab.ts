import type { StorageLike } from './types.js';

/**
 * Which tab this page is, so that a duplicated tab does not resume the original's session.
 *
 * A duplicated tab (`window.open` of the same URL, the browser's "Duplicate") starts with a
 * copy of the original's sessionStorage, resume point included. Each tab therefore keeps an id
 * in sessionStorage and holds a Web Lock named after it while it is shown. A page that finds an
 * id whose lock another live page holds is a copy: it makes an id of its own, and the resume
 * points stored under the old id no longer apply to it. A reload finds the lock free (the
 * old document is gone, or goes within the wait below) and keeps its id, so it resumes.
 * Where `navigator.locks` is missing, a BroadcastChannel question ("whose is this id?")
 * stands in for the lock.
 *
 * The lock is released on `pagehide` (a held lock can keep a page out of the back/forward
 * cache) and taken again on `pageshow`.
 */

const KEY = 'switchboard:tab';
/** How long to wait for a lock (or an answer) that a dying document may still hold. */
const WAIT_MS = 400;

let claimed: Promise<string> | undefined;
let release: (() => void) | undefined;

/** This tab's id, verified to be its own (once per page). */
export function tabId(storage: StorageLike): Promise<string> {
  return (claimed ??= claim(storage));
}

async function claim(storage: StorageLike): Promise<string> {
  let id = read(storage);
  if (!id || !(await own(id))) {
    id = crypto.randomUUID();
    write(storage, id);
    await own(id);
  }
  const current = id;
  addEventListener('pagehide', () => release?.());
  addEventListener('pageshow', (event) => event.persisted && own(current));
  return id;
}

/** Takes the tab's lock (or, without locks, asks the other tabs): true when nobody else has `id`. */
function own(id: string): Promise<boolean> {
  const locks = navigator.locks;
  if (!locks) return unclaimedElsewhere(id);
  return new Promise((resolve) => {
    locks
      .request(`${KEY}:${id}`, { signal: AbortSignal.timeout(WAIT_MS) }, () => {
        resolve(true);
        return new Promise<void>((done) => (release = done));
      })
      .catch(() => resolve(false));
  });
}

function unclaimedElsewhere(id: string): Promise<boolean> {
  if (typeof BroadcastChannel != 'function') return Promise.resolve(true);
  const channel = new BroadcastChannel(KEY);
  return new Promise((resolve) => {
    const done = (free: boolean) => {
      // Once the id is ours, answer for it; a copy's channel is not needed again.
      if (free) channel.onmessage = (event) => event.data == id && channel.postMessage(`!${id}`);
      else channel.close();
      resolve(free);
    };
    const timer = setTimeout(() => done(true), WAIT_MS);
    channel.onmessage = (event) => event.data == `!${id}` && (clearTimeout(timer), done(false));
    channel.postMessage(id);
  });
}

function read(storage: StorageLike): string | null {
  try {
    return storage.getItem(KEY);
  } catch {
    return null;
  }
}

function write(storage: StorageLike, id: string): void {
  try {
    storage.setItem(KEY, id);
  } catch {
    // Storage may be full or forbidden: the tab works, it just cannot resume after a reload.
  }
}
