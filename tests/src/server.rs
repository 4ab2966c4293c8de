//! Running the real `switchboard` process in tests: Keycloak-shaped keys and tokens, a server
//! on a free port, and a WebSocket client.

use async_net::TcpStream;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use hmac::Mac;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use sha2::Digest;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_core::protocol::{CloseCode, Envelope, MessageType, Payload, Source, Timestamp};

/// The issuer the test server trusts.
pub const ISSUER: &str = "https://sso.test/realms/agents";
/// The audience it accepts.
pub const AUDIENCE: &str = "switchboard";

/// The fixture keys (`fixtures/keycloak/`).
#[derive(Debug, Clone)]
pub struct Keys {
    pub primary: RsaPrivateKey,
    pub rotated: RsaPrivateKey,
    pub stranger: RsaPrivateKey,
    pub encryption: RsaPrivateKey,
}

impl Keys {
    pub fn load() -> Keys {
        let load = |name: &str| {
            let path = format!("{}/../fixtures/keycloak/{name}.pem", env!("CARGO_MANIFEST_DIR"));
            RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(&path).expect("fixture key"))
                .expect("a PKCS#8 key")
        };
        Keys {
            primary: load("primary"),
            rotated: load("rotated"),
            stranger: load("stranger"),
            encryption: load("encryption"),
        }
    }
}

/// Keycloak's key id: base64url(SHA-256(SPKI DER)).
pub fn kid(key: &RsaPrivateKey) -> String {
    let der = RsaPublicKey::from(key).to_public_key_der().expect("DER");
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der.as_bytes()))
}

/// A JWKS entry as Keycloak serves it (`use` `sig` with RS256, or `enc` with RSA-OAEP).
pub fn jwk(key: &RsaPrivateKey, usage: &str) -> Value {
    let public = RsaPublicKey::from(key);
    let alg = if usage == "enc" { "RSA-OAEP" } else { "RS256" };
    json!({
        "kid": kid(key), "kty": "RSA", "alg": alg, "use": usage,
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        "x5c": [], "x5t": "", "x5t#S256": "",
    })
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The claims of a Keycloak access token for `user`, valid for Keycloak's default 5 minutes.
pub fn claims(user: &str) -> Value {
    let now = now_secs();
    json!({
        "exp": now + 300, "iat": now, "auth_time": now, "jti": format!("jti-{user}-{now}"),
        "iss": ISSUER, "aud": ["account", AUDIENCE], "sub": user, "typ": "Bearer",
        "azp": "agent-host", "sid": "s-1", "acr": "1", "allowed-origins": ["https://app.test"],
        "realm_access": {"roles": ["offline_access", "agent-user"]},
        "resource_access": {"agent-host": {"roles": ["chat"]}},
        "scope": "openid profile email", "email_verified": true, "name": "Ada L",
        "preferred_username": user, "given_name": "Ada", "family_name": "L", "email": "ada@test",
    })
}

/// A token with this exact header text, signed RS256 with `key`.
pub fn sign_with_header(key: &RsaPrivateKey, header: &str, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = SigningKey::<sha2::Sha256>::new(key.clone()).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// A token signed as Keycloak signs: RS256, its header spacing, `kid` from the key.
pub fn sign(key: &RsaPrivateKey, claims: &Value) -> String {
    let header = format!(r#"{{"alg":"RS256","typ" : "JWT","kid" : "{}"}}"#, kid(key));
    sign_with_header(key, &header, claims)
}

/// A token MACed with `secret` (HS256 or HS512), for the attacks and for refresh tokens.
pub fn sign_hmac(alg: &str, secret: &[u8], header: &str, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mac = match alg {
        "HS256" => {
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut m = hmac::Hmac::<sha2::Sha512>::new_from_slice(secret).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
}

/// A `switchboard` process on a free port of 127.0.0.1, trusting [`ISSUER`] and the keys in its
/// JWKS file. Killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl ServerProcess {
    /// Starts `exe` with a JWKS file of `jwks` and `args` on top of the test defaults.
    pub fn start(exe: &str, jwks: &[Value], args: &[&str]) -> ServerProcess {
        let dir = Self::scratch_dir();
        let jwks_path = dir.join("jwks.json");
        std::fs::write(&jwks_path, json!({ "keys": jwks }).to_string()).unwrap();
        let jwks_arg = jwks_path.to_str().unwrap().to_owned();
        let mut all = vec!["--jwks-file", jwks_arg.as_str()];
        all.extend_from_slice(args);
        Self::spawn(exe, dir, &all)
    }

    /// Starts `exe` with only `args` on top of the listen address, issuer and audience.
    pub fn start_bare(exe: &str, args: &[&str]) -> ServerProcess {
        Self::spawn(exe, Self::scratch_dir(), args)
    }

    fn scratch_dir() -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("switchboard-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn spawn(exe: &str, dir: PathBuf, args: &[&str]) -> ServerProcess {
        let listen: &[&str] =
            if args.contains(&"--listen") { &[] } else { &["--listen", "127.0.0.1:0"] };
        let mut child = Command::new(exe)
            .args(listen)
            .args(["--issuer", ISSUER, "--audience", AUDIENCE])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr =
            rx.recv_timeout(Duration::from_secs(30)).expect("the server says where it listens");
        ServerProcess { child, addr: addr.parse().expect("an address"), dir }
    }

    /// Replaces the JWKS file (key rotation).
    pub fn write_jwks(&self, jwks: &[Value]) {
        std::fs::write(self.dir.join("jwks.json"), json!({ "keys": jwks }).to_string()).unwrap();
    }

    /// Kills the process at once (SIGKILL): a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the process to end.
    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server did not exit within 30 s of SIGTERM");
    }

    /// A plain HTTP request; returns the status code and the body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a test client sees next.
#[derive(Debug)]
pub enum Seen {
    Message(Envelope),
    Closed(Option<CloseCode>),
}

/// A WebSocket client for tests, driven synchronously.
#[derive(Debug)]
pub struct TestClient {
    ws: WebSocketStream<TcpStream>,
}

impl TestClient {
    /// Connects to `ws://addr/ws?query`.
    pub fn connect(addr: SocketAddr, query: &str) -> TestClient {
        Self::connect_with(addr, query, &[])
    }

    /// Connects with extra request headers (Cookie, Origin).
    pub fn connect_with(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> TestClient {
        smol::block_on(async {
            let stream = TcpStream::connect(addr).await.unwrap();
            let mut request =
                async_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    format!("ws://{addr}/ws?{query}"),
                )
                .unwrap();
            for (k, v) in headers {
                request.headers_mut().insert(
                    async_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                        .unwrap(),
                    v.parse().unwrap(),
                );
            }
            let (ws, _) = async_tungstenite::client_async(request, stream).await.expect("upgrade");
            TestClient { ws }
        })
    }

    /// The next message or close (pings from the server are skipped), within 10 s.
    pub fn next_seen(&mut self) -> Seen {
        smol::block_on(async {
            let next = async {
                loop {
                    match self.ws.next().await {
                        Some(Ok(Message::Text(text))) => {
                            let envelope = Envelope::parse(text.as_bytes(), usize::MAX)
                                .expect("a valid envelope");
                            if envelope.message_type == "system.ping" {
                                continue;
                            }
                            return Seen::Message(envelope);
                        }
                        Some(Ok(Message::Close(frame))) => {
                            return Seen::Closed(frame.map(|f| CloseCode(u16::from(f.code))));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => return Seen::Closed(None),
                    }
                }
            };
            let guard = async {
                smol::Timer::after(Duration::from_secs(10)).await;
                panic!("nothing arrived within 10 s");
            };
            smol::future::or(next, guard).await
        })
    }

    /// The next message, which must be one.
    pub fn message(&mut self) -> Envelope {
        match self.next_seen() {
            Seen::Message(envelope) => envelope,
            Seen::Closed(code) => panic!("closed ({code:?}) where a message was expected"),
        }
    }

    /// Reads until the socket closes; returns the close code and the messages before it.
    pub fn until_closed(&mut self) -> (Option<CloseCode>, Vec<Envelope>) {
        let mut seen = Vec::new();
        loop {
            match self.next_seen() {
                Seen::Message(envelope) => seen.push(envelope),
                Seen::Closed(code) => return (code, seen),
            }
        }
    }

    /// Sends raw text.
    pub fn send_text(&mut self, text: &str) {
        smol::block_on(self.ws.send(Message::Text(text.to_owned().into()))).unwrap();
    }

    /// Sends raw bytes as a binary frame.
    pub fn send_binary(&mut self, bytes: &[u8]) {
        smol::block_on(self.ws.send(Message::Binary(bytes.to_vec().into()))).unwrap();
    }

    /// Sends a client message.
    pub fn send(&mut self, message_type: &str, payload: &str) -> Envelope {
        let envelope = Envelope::create(
            Source::Client,
            MessageType::new(message_type).unwrap(),
            Payload::from_json(payload).unwrap(),
            Timestamp::from_unix_ms(
                SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64,
            )
            .unwrap(),
            u128::from(now_secs()) ^ 0x5eed,
        );
        self.send_text(std::str::from_utf8(&envelope.encode()).unwrap());
        envelope
    }

    /// Drops the TCP connection without a close frame (a lost network).
    pub fn cut(self) {
        drop(self);
    }
}

/// A tiny HTTP server that serves a JWKS document, counts its requests, and can be changed or
/// stopped while a test runs (Keycloak's certs endpoint, for the fetch and rotation tests).
#[derive(Debug, Clone)]
pub struct JwksEndpoint {
    pub url: String,
    document: std::sync::Arc<std::sync::Mutex<String>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl JwksEndpoint {
    pub fn start(jwks: &[Value]) -> JwksEndpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/realms/agents/protocol/openid-connect/certs",
            listener.local_addr().unwrap()
        );
        let endpoint = JwksEndpoint {
            url,
            document: std::sync::Arc::new(std::sync::Mutex::new(
                json!({ "keys": jwks }).to_string(),
            )),
            requests: Default::default(),
            up: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let served = endpoint.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n")
                    && stream.read(&mut byte).map(|n| n == 1).unwrap_or(false)
                {
                    head.push(byte[0]);
                }
                served.requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let response = if served.up.load(std::sync::atomic::Ordering::SeqCst) {
                    let body = served.document.lock().unwrap().clone();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        endpoint
    }

    /// Serves `jwks` from now on.
    pub fn serve(&self, jwks: &[Value]) {
        *self.document.lock().unwrap() = json!({ "keys": jwks }).to_string();
    }

    /// Answers 503 from now on.
    pub fn fail(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}
