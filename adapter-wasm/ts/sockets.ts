/** What a socket tells the shell, by attempt number. */
export interface SocketEvents {
  opened(attempt: number): void;
  frame(attempt: number, text: string): void;
  closed(attempt: number, code: number, reason: string): void;
}

/**
 * The WebSockets of one client, by the core's attempt number. The core never has two open;
 * a socket it closes is forgotten at once (its handlers removed), so its late events cannot
 * reach the core and nothing keeps it alive.
 */
export class Sockets {
  #sockets = new Map<number, WebSocket>();

  #events: SocketEvents;

  constructor(events: SocketEvents) {
    this.#events = events;
  }

  /** Opens `attempt`'s socket; false if the browser refused the URL at once. */
  open(attempt: number, url: string): boolean {
    let socket: WebSocket;
    try {
      socket = new WebSocket(url);
    } catch {
      return false;
    }
    socket.onopen = () => this.#events.opened(attempt);
    socket.onmessage = (event) =>
      typeof event.data == 'string' && this.#events.frame(attempt, event.data);
    socket.onclose = (event) => {
      this.#sockets.delete(attempt);
      this.#events.closed(attempt, event.code, event.reason);
    };
    this.#sockets.set(attempt, socket);
    return true;
  }

  send(attempt: number, frame: string): void {
    try {
      this.#sockets.get(attempt)?.send(frame);
    } catch {
      // Not open (yet, or any more): the core hears of the close and decides.
    }
  }

  /**
   * Closes `attempt`'s socket. Pages may only send 1000 and 3000–4999: any other code (the
   * core's 1001 "going away", for a page that hides or a socket it replaces) is sent as a close
   * without a code, which the server, like 1001, takes as "keep the session for a resume".
   */
  close(attempt: number, code: number, reason: string): void {
    const socket = this.#sockets.get(attempt);
    if (!socket) return;
    this.#sockets.delete(attempt);
    socket.onopen = socket.onmessage = socket.onclose = null;
    try {
      if (code == 1000 || (code >= 3000 && code < 5000)) socket.close(code, reason.slice(0, 60));
      else socket.close();
    } catch {
      socket.close();
    }
  }
}
