// What the browser tests share: a real switchboard server on a free port, a TCP proxy that
// can cut the browser off from it, tokens minted with the server's dev key, and headless
// Chromium (Debian's, driven by playwright-core).
import { spawn } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, sign } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const SERVER_BIN = resolve(root, process.env.SWITCHBOARD_BIN ?? '../target/release/switchboard');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/lib/chromium/chromium';
export const API_KEY = 'test-api-key';

/** A port nobody listens on (the kernel's choice). */
export async function freePort() {
  const server = net.createServer();
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address();
  await new Promise((done) => server.close(done));
  return port;
}

/**
 * Starts `switchboard --dev` on a free port, serving dist/ under /app/. `stop()` sends
 * SIGTERM (graceful shutdown); `restart()` starts a new process on the same port and key.
 */
export async function startServer({ args = [] } = {}) {
  const state = mkdtempSync(join(tmpdir(), 'switchboard-test-'));
  const port = await freePort();
  const server = {
    port,
    origin: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    keyPath: join(state, 'dev-key.pem'),
    process: undefined,
    token: undefined,
    output: '',
    async start() {
      const child = spawn(
        SERVER_BIN,
        ['--dev', '--listen', `127.0.0.1:${port}`, '--dev-key', this.keyPath, '--api-key', API_KEY, '--static-dir', join(root, 'dist'), ...args],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      this.process = child;
      child.stderr.on('data', (chunk) => (this.output += chunk));
      await new Promise((resolve, reject) => {
        let out = '';
        const timer = setTimeout(() => reject(new Error(`switchboard did not start:\n${out}${this.output}`)), 20_000);
        child.once('exit', (code) => reject(new Error(`switchboard exited (${code}):\n${out}${this.output}`)));
        child.stdout.on('data', (chunk) => {
          out += chunk;
          const token = /token \(12 h, user dev-user\): (\S+)/.exec(out);
          if (/switchboard listening on/.test(out) && token) {
            clearTimeout(timer);
            this.token = token[1];
            resolve();
          }
        });
      });
    },
    /** Graceful stop (SIGTERM); resolves when the process has exited. */
    async stop(signal = 'SIGTERM') {
      const child = this.process;
      if (!child || child.exitCode !== null) return;
      const exited = new Promise((done) => child.once('exit', done));
      child.kill(signal);
      await exited;
    },
    async restart() {
      await this.stop();
      await this.start();
    },
    async close() {
      await this.stop('SIGKILL');
      rmSync(state, { recursive: true, force: true });
    },
    /** The backend's publish API: resolves to the number of deliveries. */
    async publish(conversationId, message) {
      const response = await fetch(`${this.origin}/api/publish`, {
        method: 'POST',
        headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ conversationId, message }),
      });
      if (!response.ok) throw new Error(`publish: ${response.status} ${await response.text()}`);
      return (await response.json()).delivered;
    },
    /** A token for another user, signed with the server's dev key. */
    mintToken(user, { expiresIn = 3600 } = {}) {
      return mintToken(this.keyPath, DEV_ISSUER, user, expiresIn);
    },
  };
  await server.start();
  return server;
}

/** The issuer of the dev server's tokens (one for every dev instance). */
export const DEV_ISSUER = 'https://switchboard.dev.invalid/realms/dev';

/** A Keycloak-shaped RS256 token, as the dev server makes them. */
export function mintToken(keyPath, issuer, user, expiresIn) {
  const key = createPrivateKey(readFileSync(keyPath));
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  const kid = createHash('sha256').update(spki).digest('base64url');
  const now = Math.floor(Date.now() / 1000);
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const header = part({ alg: 'RS256', typ: 'JWT', kid });
  const claims = part({
    iss: issuer,
    sub: user,
    typ: 'Bearer',
    azp: 'switchboard-dev',
    preferred_username: user,
    iat: now,
    exp: now + expiresIn,
  });
  const signature = sign('sha256', Buffer.from(`${header}.${claims}`), key).toString('base64url');
  return `${header}.${claims}.${signature}`;
}

/**
 * A TCP proxy in front of the server, so a test can take the network away from the browser
 * while the server (and its sessions) keep running: `cut()` drops every connection;
 * `freeze()` leaves them open but silent (half-open); `stop()` also refuses new ones until
 * `start()`.
 */
export async function startProxy(targetPort) {
  const port = await freePort();
  const sockets = new Set();
  const pairs = new Set();
  let listener;
  const proxy = {
    port,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    connections: 0,
    async start() {
      listener = net.createServer((client) => {
        proxy.connections++;
        const upstream = net.connect(targetPort, '127.0.0.1');
        for (const socket of [client, upstream]) {
          sockets.add(socket);
          socket.on('error', () => {});
          socket.on('close', () => {
            sockets.delete(socket);
            client.destroy();
            upstream.destroy();
          });
        }
        client.pipe(upstream);
        upstream.pipe(client);
        const pair = [client, upstream];
        pairs.add(pair);
        client.on('close', () => pairs.delete(pair));
      });
      await new Promise((done) => listener.listen(port, '127.0.0.1', done));
    },
    cut() {
      for (const socket of sockets) socket.destroy();
    },
    /** Makes every open connection half-open: nothing passes, nothing closes (new ones work). */
    freeze() {
      for (const [client, upstream] of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        client.pause();
        upstream.pause();
      }
    },
    async stop() {
      const closed = new Promise((done) => listener.close(done));
      proxy.cut();
      await closed;
    },
  };
  await proxy.start();
  return proxy;
}

/** Chromium's own switches that playwright adds and some tests need gone. */
export const KEEP_BROWSER_BEHAVIOUR = ['--disable-back-forward-cache', '--disable-background-timer-throttling'];

export function launchBrowser({ realBrowser = false } = {}) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--disable-dev-shm-usage'],
    ...(realBrowser ? { ignoreDefaultArgs: KEEP_BROWSER_BEHAVIOUR } : {}),
  });
}

/** Polls `check` (in Node) until it returns something truthy; fails with `what` after `timeout` ms. */
export async function waitFor(check, what, timeout = 10_000) {
  const start = Date.now();
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() - start > timeout) throw new Error(`timed out waiting for ${what}`);
    await new Promise((done) => setTimeout(done, 25));
  }
}

/** Opens the test page, optionally with a client started from the query. */
export async function openTestPage(context, server, query = {}) {
  const page = await context.newPage();
  const search = new URLSearchParams(query).toString();
  await page.goto(`${server.origin}/app/test.html${search ? `?${search}` : ''}`);
  await page.waitForFunction(() => typeof window.start == 'function');
  return page;
}

/** Waits in the page until the client is active; returns its status. */
export function waitActive(page, timeout = 10_000) {
  return page.waitForFunction(() => window.client?.state == 'active' && window.client.status, null, { timeout }).then((h) => h.jsonValue());
}

export const states = (page) =>
  page.evaluate(() => window.events.filter((e) => e.event == 'statechange').map((e) => `${e.data.newState}:${e.data.reason}`));
