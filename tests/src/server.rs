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

/// `text` in base64url without padding, as JWTs encode their parts.
pub fn base64url(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// `input` (a JWT's `header.payload`) with its RS256 signature by `key` appended.
pub fn sign_input(key: &RsaPrivateKey, input: &str) -> String {
    let signature = SigningKey::<sha2::Sha256>::new(key.clone()).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// A token with this exact header text, signed RS256 with `key`.
pub fn sign_with_header(key: &RsaPrivateKey, header: &str, claims: &Value) -> String {
    sign_input(key, &format!("{}.{}", base64url(header), base64url(&claims.to_string())))
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
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
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
        let mut command = Command::new(exe);
        command.args(listen).args(["--issuer", ISSUER, "--audience", AUDIENCE]);
        if !args.iter().any(|a| a.starts_with("--authorize")) {
            command.args(["--authorize", "allow-all"]);
        }
        command.args(args);
        Self::from_command(command, dir)
    }

    /// Starts `command` (a `switchboard` with all its arguments) as is.
    pub fn start_command(command: Command) -> ServerProcess {
        Self::from_command(command, Self::scratch_dir())
    }

    fn from_command(mut command: Command, dir: PathBuf) -> ServerProcess {
        if command.get_envs().all(|(k, _)| k != "RUST_LOG") {
            command.env("RUST_LOG", std::env::var("TEST_SERVER_LOG").unwrap_or("warn".into()));
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server starts");
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                kept.lock().unwrap().push(line);
            }
        });
        let addr =
            rx.recv_timeout(Duration::from_secs(60)).expect("the server says where it listens");
        ServerProcess { child, addr: addr.parse().expect("an address"), dir, stdout: lines }
    }

    /// The number of threads the process has now.
    pub fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// What the server printed on its standard output so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Runs `exe` with `args` (and nothing added) to its end; its exit code and standard error.
    pub fn run_to_end(exe: &str, args: &[&str]) -> (Option<i32>, String) {
        let output = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("the server runs");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
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

    /// Stops the process (SIGSTOP): its sockets stay open, nothing is read or answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes it after [`ServerProcess::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
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

    /// [`ServerProcess::http`] that says `None` instead of panicking when the request fails
    /// (a server that refuses connections at a cap resets them).
    pub fn try_http(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(self.addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok())?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((status, body))
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
    Message(Box<Envelope>),
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

    /// Upgrades an already connected TCP stream to `ws://addr/ws?query`.
    pub fn over(stream: std::net::TcpStream, addr: SocketAddr, query: &str) -> TestClient {
        smol::block_on(async {
            let stream = TcpStream::try_from(stream).unwrap();
            let url = format!("ws://{addr}/ws?{query}");
            let (ws, _) = async_tungstenite::client_async(url, stream).await.expect("upgrade");
            TestClient { ws }
        })
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
        self.next_within(Duration::from_secs(10)).expect("nothing arrived within 10 s")
    }

    /// The next message or close (pings from the server are skipped), or `None` when nothing
    /// came within `wait`.
    pub fn next_within(&mut self, wait: Duration) -> Option<Seen> {
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
                            return Seen::Message(Box::new(envelope));
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
                smol::Timer::after(wait).await;
                None
            };
            smol::future::or(async { Some(next.await) }, guard).await
        })
    }

    /// The next message, which must be one.
    pub fn message(&mut self) -> Envelope {
        match self.next_seen() {
            Seen::Message(envelope) => *envelope,
            Seen::Closed(code) => panic!("closed ({code:?}) where a message was expected"),
        }
    }

    /// Reads until the socket closes; returns the close code and the messages before it.
    pub fn until_closed(&mut self) -> (Option<CloseCode>, Vec<Envelope>) {
        let mut seen = Vec::new();
        loop {
            match self.next_seen() {
                Seen::Message(envelope) => seen.push(*envelope),
                Seen::Closed(code) => return (code, seen),
            }
        }
    }

    /// The text of the next message (pings skipped), which must be one.
    pub fn message_text(&mut self) -> String {
        within_10_s("a message", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        if !text.contains("\"type\":\"system.ping\"") {
                            return text.to_string();
                        }
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("closed ({other:?}) where a message was expected"),
                }
            }
        })
    }

    /// Closes the socket with this close code and waits for the server's answer; returns the
    /// code the server answered with.
    pub fn close_with(mut self, code: u16) -> Option<CloseCode> {
        use async_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame { code: code.into(), reason: "".into() };
        let _ = smol::block_on(self.ws.send(Message::Close(Some(frame))));
        self.until_closed().0
    }

    /// Sends a WebSocket ping and returns the payload of the next pong (messages before it are
    /// skipped), within 10 s.
    pub fn ping(&mut self, payload: &[u8]) -> Vec<u8> {
        within_10_s("a pong", async {
            self.ws.send(Message::Ping(payload.to_vec().into())).await.unwrap();
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Pong(payload))) => return payload.to_vec(),
                    Some(Ok(_)) => continue,
                    other => panic!("closed ({other:?}) where a pong was expected"),
                }
            }
        })
    }

    /// Sends raw text.
    pub fn send_text(&mut self, text: &str) {
        smol::block_on(self.ws.send(Message::Text(text.to_owned().into()))).unwrap();
    }

    /// Writes `bytes` to the socket as they are (frames the test built itself, or parts of
    /// them).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        use futures_util::AsyncWriteExt;
        smol::block_on(async {
            let stream = self.ws.get_mut();
            stream.write_all(bytes).await.unwrap();
            stream.flush().await.unwrap();
        });
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

/// Runs `future` to its end, or panics after 10 s without `what`.
fn within_10_s<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    smol::block_on(smol::future::or(future, async {
        smol::Timer::after(Duration::from_secs(10)).await;
        panic!("no {what} within 10 s");
    }))
}

/// A tiny HTTP server for the tests: each request (method, path, body) is answered by a
/// handler, on its own thread; requests are logged and can be held back (a backend or identity
/// provider that hangs).
#[derive(Clone)]
pub struct HttpStub {
    pub addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    held: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl std::fmt::Debug for HttpStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStub").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// What a [`HttpStub`] answers: status and JSON body.
pub type Handler = dyn Fn(&str, &str, &str) -> (u16, String) + Send + Sync;

impl HttpStub {
    pub fn start(
        handler: impl Fn(&str, &str, &str) -> (u16, String) + Send + Sync + 'static,
    ) -> HttpStub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stub = HttpStub {
            addr: listener.local_addr().unwrap(),
            log: Default::default(),
            held: Default::default(),
        };
        let handler: std::sync::Arc<Handler> = std::sync::Arc::new(handler);
        let served = stub.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (served, handler) = (served.clone(), handler.clone());
                std::thread::spawn(move || served.answer(stream, &*handler));
            }
        });
        stub
    }

    fn answer(&self, mut stream: std::net::TcpStream, handler: &Handler) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n")
            && stream.read(&mut byte).map(|n| n == 1).unwrap_or(false)
        {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut words = head.split_whitespace();
        let (method, path) =
            (words.next().unwrap_or("").to_owned(), words.next().unwrap_or("").to_owned());
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        let _ = stream.read_exact(&mut body);
        let body = String::from_utf8_lossy(&body).into_owned();
        self.log.lock().unwrap().push((method.clone(), path.clone(), body.clone()));
        let (lock, released) = &*self.held;
        let mut held = lock.lock().unwrap();
        while *held {
            held = released.wait(held).unwrap();
        }
        drop(held);
        let (status, body) = handler(&method, &path, &body);
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes());
    }

    /// Requests received so far (method, path, body), answered or held.
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.log.lock().unwrap().clone()
    }

    /// Holds every answer back from now on, until [`HttpStub::release`].
    pub fn hold(&self) {
        *self.held.0.lock().unwrap() = true;
    }

    /// Answers what was held, and everything from now on.
    pub fn release(&self) {
        *self.held.0.lock().unwrap() = false;
        self.held.1.notify_all();
    }
}

/// Keycloak's certs endpoint for the fetch and rotation tests: serves a JWKS document that the
/// test can change, or answers 503, or holds its answers back.
#[derive(Debug, Clone)]
pub struct JwksEndpoint {
    pub url: String,
    pub stub: HttpStub,
    document: std::sync::Arc<std::sync::Mutex<String>>,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl JwksEndpoint {
    pub fn start(jwks: &[Value]) -> JwksEndpoint {
        let document =
            std::sync::Arc::new(std::sync::Mutex::new(json!({ "keys": jwks }).to_string()));
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (doc, is_up) = (document.clone(), up.clone());
        let stub = HttpStub::start(move |_, _, _| {
            if is_up.load(std::sync::atomic::Ordering::SeqCst) {
                (200, doc.lock().unwrap().clone())
            } else {
                (503, String::new())
            }
        });
        let url = format!("http://{}/realms/agents/protocol/openid-connect/certs", stub.addr);
        JwksEndpoint { url, stub, document, up }
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
        self.stub.requests().len()
    }
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.x), so that tests can
/// play several clients' IP addresses.
pub fn connect_from(from: std::net::Ipv4Addr, addr: SocketAddr) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}
