//! A small TCP load balancer on 127.0.0.1: each new connection goes to the next of its
//! backends that accepts (round robin), and the test may cut open connections or change the
//! backends. It stands for the load balancer in front of the instances (the chaos run), and for
//! the address a Redis failover moves to the promoted replica (a virtual IP, Sentinel).

use async_net::{TcpListener, TcpStream};
use std::collections::BTreeMap;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The balancer; it runs on smol's global executor for as long as the test process does.
#[derive(Debug)]
pub struct Balancer {
    pub addr: SocketAddr,
    /// Where new connections go.
    pub backends: Arc<Mutex<Vec<SocketAddr>>>,
    /// The client side of every connection still proxied, by its number.
    open: Arc<Mutex<BTreeMap<usize, TcpStream>>>,
}

impl Balancer {
    /// Starts one on a free port, sending connections to `backends`.
    pub fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = smol::block_on(TcpListener::bind("127.0.0.1:0")).expect("a port");
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(backends));
        let open = Arc::new(Mutex::new(BTreeMap::new()));
        let (kept, targets) = (open.clone(), backends.clone());
        let next = Arc::new(AtomicUsize::new(0));
        smol::spawn(async move {
            for number in 0.. {
                let Ok((client, _)) = listener.accept().await else { return };
                let (targets, kept, next) = (targets.clone(), kept.clone(), next.clone());
                smol::spawn(proxy(number, client, targets, kept, next)).detach();
            }
        })
        .detach();
        Balancer { addr, backends, open }
    }

    /// Sends new connections to `backends` from now on (open ones stay where they are).
    pub fn send_to(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().unwrap() = backends;
    }

    /// The numbers of the connections open now.
    pub fn open(&self) -> Vec<usize> {
        self.open.lock().unwrap().keys().copied().collect()
    }

    /// Cuts connection `number` (both ways, no close handshake), if it is still open.
    pub fn cut(&self, number: usize) {
        if let Some(stream) = self.open.lock().unwrap().remove(&number) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

async fn proxy(
    number: usize,
    client: TcpStream,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    open: Arc<Mutex<BTreeMap<usize, TcpStream>>>,
    next: Arc<AtomicUsize>,
) {
    let live = backends.lock().unwrap().clone();
    for _ in 0..live.len() {
        let at = live[next.fetch_add(1, Ordering::Relaxed) % live.len()];
        let Ok(server) = TcpStream::connect(at).await else { continue };
        open.lock().unwrap().insert(number, client.clone());
        let (mut to_server, mut to_client) = (server.clone(), client.clone());
        let up = futures_util::io::copy(client.clone(), &mut to_server);
        let down = futures_util::io::copy(server.clone(), &mut to_client);
        let _ = smol::future::or(up, down).await;
        open.lock().unwrap().remove(&number);
        let _ = server.shutdown(Shutdown::Both);
        break;
    }
    let _ = client.shutdown(Shutdown::Both);
}
