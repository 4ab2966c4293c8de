/**
 * A `debug`-style logger for switchboard (entry `switchboard/debug`), kept out of the client
 * bundle: pass one to the client as `new WebSocketClient({…, logger: createLogger()})`.
 *
 * Namespaces (`protocol:client`, `protocol:bus`, `protocol:reconnect`, or the application's
 * own) are enabled by `localStorage.debug` in the `debug` package's syntax: a comma- or
 * space-separated list, `*` for any run of characters, a leading `-` to exclude
 * (`protocol:*,-protocol:bus`). Lines read `<time> [LEVEL] [namespace] message`. Message data
 * (payloads) is printed as `[redacted]` unless asked for (`payloads: true`, or
 * `localStorage['debug:payloads'] = 'true'`). A disabled namespace costs one cached Map look-up.
 */
import type { LogLevel, Logger } from './types.js';

export type { LogLevel, Logger };

const LEVELS: LogLevel[] = ['DEBUG', 'INFO', 'WARN', 'ERROR'];

export interface LoggerOptions {
  /** The enabled namespaces (default: `localStorage.debug`). */
  filter?: string;
  /** The least level printed (default DEBUG). */
  level?: LogLevel;
  /** Print message data as it is (default: `localStorage['debug:payloads'] == 'true'`). */
  payloads?: boolean;
  /** Where lines go (default: the console). */
  output?: Pick<Console, 'debug' | 'info' | 'warn' | 'error'>;
}

/** A logger bound to one namespace, for the application's own logs. */
export interface NamespaceLogger {
  readonly enabled: boolean;
  debug(message: string, data?: unknown): void;
  info(message: string, data?: unknown): void;
  warn(message: string, data?: unknown): void;
  error(message: string, data?: unknown): void;
}

export interface DebugLogger extends Logger {
  namespace(namespace: string): NamespaceLogger;
}

/** Whether `namespace` passes `filter` (the `debug` package's syntax). */
export function namespaceFilter(filter: string): (namespace: string) => boolean {
  const include: RegExp[] = [];
  const exclude: RegExp[] = [];
  for (const item of filter.split(/[\s,]+/)) {
    if (!item) continue;
    const negative = item[0] == '-';
    const glob = (negative ? item.slice(1) : item).replace(/[.+?^${}()|[\]\\]/g, '\\$&');
    (negative ? exclude : include).push(new RegExp(`^${glob.replace(/\*/g, '.*')}$`));
  }
  return (namespace) =>
    include.some((r) => r.test(namespace)) && !exclude.some((r) => r.test(namespace));
}

/** localStorage may be missing or throw (privacy modes, sandboxed frames): read it safely. */
function stored(key: string): string {
  try {
    return localStorage.getItem(key) ?? '';
  } catch {
    return '';
  }
}

export function createLogger(options: LoggerOptions = {}): DebugLogger {
  const passes = namespaceFilter(options.filter ?? stored('debug'));
  const verdicts = new Map<string, boolean>();
  const least = LEVELS.indexOf(options.level ?? 'DEBUG');
  const payloads = options.payloads ?? stored('debug:payloads') == 'true';
  const output = options.output ?? console;

  const enabled = (namespace: string): boolean => {
    let verdict = verdicts.get(namespace);
    if (verdict === undefined) verdicts.set(namespace, (verdict = passes(namespace)));
    return verdict;
  };
  const log = (level: LogLevel, namespace: string, message: string, data?: unknown): void => {
    if (!enabled(namespace) || LEVELS.indexOf(level) < least) return;
    const line = `${new Date().toISOString()} [${level}] [${namespace}] ${message}`;
    const method = level.toLowerCase() as 'debug';
    if (data === undefined) output[method](line);
    else output[method](line, payloads ? data : '[redacted]');
  };
  const namespace = (name: string): NamespaceLogger => {
    const at = (level: LogLevel) => (message: string, data?: unknown) => log(level, name, message, data);
    return {
      enabled: enabled(name),
      debug: at('DEBUG'),
      info: at('INFO'),
      warn: at('WARN'),
      error: at('ERROR'),
    };
  };
  return { enabled, log, namespace };
}
