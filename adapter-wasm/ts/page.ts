/** The page events the core knows. */
export type PageEvent = 'online' | 'offline' | 'visible' | 'hidden' | 'pagehide' | 'pageshow' | 'freeze';

/**
 * Turns the browser's page lifecycle into the core's page inputs: network (`online`,
 * `offline`), visibility, the back/forward cache (`pagehide`; `pageshow` only when the page
 * comes back from the cache) and freezing (`freeze`; `resume` wakes like `visible`, so the
 * core checks at once that the socket survived). Returns a function that stops listening.
 */
export function watchPage(feed: (event: PageEvent) => void): () => void {
  const listeners: [EventTarget, string, (event: Event) => void][] = [
    [window, 'online', () => feed('online')],
    [window, 'offline', () => feed('offline')],
    [window, 'pagehide', () => feed('pagehide')],
    [window, 'pageshow', (event) => (event as PageTransitionEvent).persisted && feed('pageshow')],
    [document, 'visibilitychange', () => feed(document.visibilityState == 'visible' ? 'visible' : 'hidden')],
    [document, 'freeze', () => feed('freeze')],
    [document, 'resume', () => feed('visible')],
  ];
  for (const [target, type, listener] of listeners) target.addEventListener(type, listener);
  return () => {
    for (const [target, type, listener] of listeners) target.removeEventListener(type, listener);
  };
}
