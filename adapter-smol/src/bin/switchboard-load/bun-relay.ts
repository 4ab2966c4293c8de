// A Bun relay that speaks enough of switchboard's wire protocol for `switchboard-load`, so that
// Bun can be measured beside switchboard with the same generator, workloads and counting (see
// the README, "Side by side with Bun"). Not part of the build or the tests.
//
// - `GET /ws?token=…&conversation_id=…`: the RS256 token is checked against the JWKS file the
//   generator writes (kid, alg, signature, iss, azp, typ, exp), the socket subscribes to its
//   conversation and gets a `system.connection.established`.
// - `POST /api/publish` (Bearer api key): one envelope, encoded once, `server.publish` to the
//   conversation.
// - The flags it is started with are switchboard's; those it does not know it ignores.
import { createPublicKey, verify, randomUUID, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";

const args = process.argv.slice(2);
const arg = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const [host, port] = (arg("--listen") ?? "127.0.0.1:0").split(":");
const apiKey = arg("--api-key") ?? "load";
const issuer = arg("--issuer");
const azp = arg("--azp");
const keys = new Map<string, KeyObject>();
const jwksFile = arg("--jwks-file");
if (jwksFile) {
  for (const k of JSON.parse(readFileSync(jwksFile, "utf8")).keys) {
    keys.set(k.kid, createPublicKey({ key: k, format: "jwk" }));
  }
}

function check(token: string): string | null {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
  if (header.alg !== "RS256") return null;
  const key = keys.get(header.kid);
  if (!key) return null;
  const signed = Buffer.from(parts[0] + "." + parts[1]);
  if (!verify("RSA-SHA256", signed, key, Buffer.from(parts[2], "base64url"))) return null;
  const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  const now = Date.now() / 1000;
  if (claims.iss !== issuer || claims.azp !== azp || claims.typ !== "Bearer") return null;
  if (typeof claims.exp !== "number" || claims.exp + 30 < now) return null;
  return claims.sub;
}

const stamp = () => new Date().toISOString();
type Data = { user: string; conversation: string };

const server = Bun.serve<Data, {}>({
  hostname: host,
  port: Number(port),
  async fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === "/ws") {
      const user = check(url.searchParams.get("token") ?? "");
      if (!user) return new Response("unauthorized", { status: 401 });
      const conversation = url.searchParams.get("conversation_id") ?? "";
      if (server.upgrade(req, { data: { user, conversation } })) return;
      return new Response("upgrade failed", { status: 400 });
    }
    if (url.pathname === "/api/publish" && req.method === "POST") {
      if (req.headers.get("authorization") !== `Bearer ${apiKey}`) {
        return new Response("unauthorized", { status: 401 });
      }
      const body = await req.json();
      const id = randomUUID();
      const text = JSON.stringify({
        id,
        type: body.message.type,
        version: "1.0",
        timestamp: stamp(),
        source: "server",
        conversationId: body.conversationId,
        payload: body.message.payload,
      });
      server.publish(body.conversationId, text);
      return Response.json({ id });
    }
    if (url.pathname === "/healthz") return new Response("ok\n");
    return new Response("not found", { status: 404 });
  },
  websocket: {
    idleTimeout: 120,
    open(ws) {
      ws.subscribe(ws.data.conversation);
      ws.send(
        JSON.stringify({
          id: randomUUID(),
          type: "system.connection.established",
          version: "1.0",
          timestamp: stamp(),
          source: "server",
          payload: { connectionId: randomUUID(), userId: ws.data.user },
        }),
      );
    },
    message(ws, message) {
      // Members' own messages: relayed to their conversation (the load only sends pongs).
      const text = String(message);
      if (text.includes('"type":"data.')) server.publish(ws.data.conversation, text);
    },
  },
});
console.log(`listening on ${server.hostname}:${server.port}`);
