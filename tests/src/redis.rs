//! A real `redis-server` for the tests: a child process on a free port of 127.0.0.1, without
//! persistence, that can be killed, paused (`SIGSTOP`), resumed and restarted on the same port
//! (empty, as a Redis without persistence comes back), and asked things with `redis-cli`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked: bound and let go).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

/// A `redis-server` child process. Killed when dropped.
#[derive(Debug)]
pub struct RedisProcess {
    pub port: u16,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts one on a free port and waits until it answers.
    pub fn start() -> RedisProcess {
        Self::start_on(free_port())
    }

    /// A Redis that will run on `port` once [`RedisProcess::restart`] is called (the port is
    /// free when this is made): for an instance that starts while Redis is down.
    pub fn not_started() -> RedisProcess {
        RedisProcess { port: free_port(), child: None }
    }

    /// Starts one on `port` and waits until it answers.
    pub fn start_on(port: u16) -> RedisProcess {
        let mut redis = RedisProcess { port, child: None };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port, with no data (after [`RedisProcess::kill`], or for the
    /// first time after [`RedisProcess::not_started`]).
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port, "--save", "", "--appendonly", "no"])
            // `DEBUG SLEEP` stands for a Redis that stops answering.
            .args(["--enable-debug-command", "local"])
            .args(["--dir", std::env::temp_dir().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server starts (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server on port {port} did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it at once (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes it after [`RedisProcess::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// `redis-cli -p <port> args...`: its output, trimmed; `None` if it failed.
    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (output.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// [`RedisProcess::try_cli`], which must succeed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> u64 {
        let out = self.cli(&["PUBSUB", "NUMSUB", channel]);
        out.lines().nth(1).and_then(|n| n.trim().parse().ok()).expect("PUBSUB NUMSUB's count")
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill(); // SIGKILL ends a paused process too.
    }
}

/// Polls `check` every 50 ms until it holds, for at most `seconds`; whether it did.
pub fn eventually(seconds: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
