//! An answer the driver gets at once or later: the verifier and the authorizers decide most
//! requests on the spot (a remembered token, a claim), and only some need to wait (a key set to
//! fetch, a backend to ask). The driver feeds an immediate answer back to the hub after the
//! outputs at hand are carried out; a later one arrives through its inbox.

use futures_util::future::LocalBoxFuture;

/// A decision now, or a future that makes it.
pub enum Answer<T> {
    Now(T),
    Later(LocalBoxFuture<'static, T>),
}

impl<T> std::fmt::Debug for Answer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Answer::Now(_) => "Now",
            Answer::Later(_) => "Later",
        })
    }
}
