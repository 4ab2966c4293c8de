//! A socket's outgoing mailbox: the driver appends frames, the socket's writer takes all of
//! them at once.
//!
//! The driver writes most frames itself; what a socket did not take, or what comes while its
//! writer is busy, is handed over here, all of a socket's frames at once. A channel pays a
//! queue slot and a notification per frame; this pays one uncontended lock per hand-over, and
//! wakes the writer only when the mailbox goes from empty to not empty. The writer takes the whole queue, so what was sent
//! while it was busy goes out in its next write; the mailbox starts again without room (one
//! allocation per batch, not per frame), so an idle socket holds no queue allocation.
//!
//! Unbounded here; bounded by the hub, which never lets a socket's unflushed frames or bytes
//! exceed its outbound window (and cuts the socket off with 4013 instead).
//!
//! A mailbox may start with a held item ([`outbox_holding`]): it wakes nobody and is written in
//! front of whatever is written first, by either end. The socket's HTTP `101` answer waits
//! there, so that it leaves in the same write as the first frame (one packet, not two).

use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// The driver's end. Dropping it closes the mailbox: the writer gets what is left, then ends.
#[derive(Debug)]
pub struct OutboxSender<T>(Arc<Shared<T>>);

/// The writer's end.
#[derive(Debug)]
pub struct OutboxReceiver<T>(Arc<Shared<T>>);

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    waker: AtomicWaker,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// The writer holds a batch it has not finished writing, or has finished for good.
    writing: bool,
    /// The first of `items` is held: it waits for something to go out with.
    held: bool,
}

impl<T> State<T> {
    /// The items that are not held.
    fn ready(&self) -> usize {
        self.items.len() - usize::from(self.held)
    }
}

/// A new, empty mailbox.
pub fn outbox<T>() -> (OutboxSender<T>, OutboxReceiver<T>) {
    new(VecDeque::new(), false)
}

/// A new mailbox holding `first`, to be written in front of the first thing either end
/// writes (see [`OutboxSender::take_held`] and [`OutboxReceiver::take_all`]).
pub fn outbox_holding<T>(first: T) -> (OutboxSender<T>, OutboxReceiver<T>) {
    new(VecDeque::from([first]), true)
}

fn new<T>(items: VecDeque<T>, held: bool) -> (OutboxSender<T>, OutboxReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { items, closed: false, writing: false, held }),
        waker: AtomicWaker::new(),
    });
    (OutboxSender(shared.clone()), OutboxReceiver(shared))
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A writer that panicked holding the lock leaves a queue that is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T> OutboxSender<T> {
    /// Appends every one of `items`, in order, under one lock, waking the writer if the mailbox
    /// was empty.
    pub fn push_all(&self, items: impl IntoIterator<Item = T>) {
        let was_empty = {
            let mut state = self.0.lock();
            let before = state.ready();
            state.items.extend(items);
            before == 0 && state.ready() > 0
        };
        if was_empty {
            self.0.waker.wake();
        }
    }

    /// Whether the writer has nothing waiting, nothing half written and has not finished (a
    /// close written): then the sender may write to the socket itself, and what it writes
    /// comes after everything before it (and after the held item, [`Self::take_held`]).
    pub fn is_idle(&self) -> bool {
        let state = self.0.lock();
        state.ready() == 0 && !state.writing
    }

    /// The held item, if it is still here: a sender that writes itself writes it first.
    pub fn take_held(&self) -> Option<T> {
        let mut state = self.0.lock();
        if !state.held {
            return None;
        }
        state.held = false;
        let held = state.items.pop_front();
        if state.items.is_empty() {
            // An idle socket keeps no room.
            state.items = VecDeque::new();
        }
        held
    }
}

impl<T> Drop for OutboxSender<T> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.waker.wake();
    }
}

impl<T> OutboxReceiver<T> {
    /// Whether there is something to take (`true`), or the sender is gone and nothing is left
    /// (`false`); pending otherwise. A writer that waits on more than the mailbox is woken for
    /// it by [`Self::wake`].
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<bool> {
        self.0.waker.register(cx.waker());
        let state = self.0.lock();
        if state.ready() > 0 {
            Poll::Ready(true)
        } else if state.closed {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    }

    /// Wakes the writer waiting in [`Self::poll_ready`], for something else it waits on.
    pub fn wake(&self) {
        self.0.waker.wake();
    }

    /// Waits until the sender is gone (whatever is still waiting).
    pub async fn closed(&self) {
        poll_fn(|cx| {
            self.0.waker.register(cx.waker());
            if self.0.lock().closed { Poll::Ready(()) } else { Poll::Pending }
        })
        .await
    }

    /// Takes everything waiting, the held item first (the mailbox keeps no room: an idle
    /// socket holds none); the writer is writing until it says [`Self::written`], even if it
    /// took nothing (it may be writing something of its own, such as a pong, which the sender
    /// must not cut into).
    pub fn take_all(&self) -> VecDeque<T> {
        let mut state = self.0.lock();
        state.writing = true;
        state.held = false;
        std::mem::take(&mut state.items)
    }

    /// The writer is done with what it took; if `finished`, it writes nothing more, and the
    /// sender must not write in its place either (see [`OutboxSender::is_idle`]).
    pub fn written(&self, finished: bool) {
        let mut state = self.0.lock();
        state.writing = finished;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_order_in_one_batch_then_ends_when_the_sender_is_gone() {
        smol::block_on(async {
            let (sender, receiver) = outbox();
            for i in 0..5 {
                sender.push_all([i]);
            }
            assert!(poll_fn(|cx| receiver.poll_ready(cx)).await);
            assert_eq!(receiver.take_all(), [0, 1, 2, 3, 4]);

            sender.push_all([5]);
            drop(sender);
            receiver.closed().await;
            assert!(
                poll_fn(|cx| receiver.poll_ready(cx)).await,
                "what was sent before the close is still taken"
            );
            assert_eq!(receiver.take_all(), [5]);
            assert!(!poll_fn(|cx| receiver.poll_ready(cx)).await);
        });
    }

    #[test]
    fn a_push_wakes_a_waiting_writer() {
        let executor = smol::LocalExecutor::new();
        let (sender, receiver) = outbox();
        let writer = executor.spawn(async move {
            let mut seen = Vec::new();
            while poll_fn(|cx| receiver.poll_ready(cx)).await {
                seen.extend(receiver.take_all());
            }
            seen
        });
        smol::block_on(executor.run(async {
            for i in 0..3 {
                smol::future::yield_now().await;
                sender.push_all([i]);
            }
            drop(sender);
            assert_eq!(writer.await, [0, 1, 2]);
        }));
    }

    #[test]
    fn the_sender_may_write_itself_only_while_the_writer_is_idle() {
        let (sender, receiver) = outbox();
        assert!(sender.is_idle());
        sender.push_all([1]);
        assert!(!sender.is_idle(), "something waits for the writer");
        assert_eq!(receiver.take_all(), [1]);
        assert!(!sender.is_idle(), "the writer is writing it");
        receiver.written(false);
        assert!(sender.is_idle());
        receiver.written(true);
        assert!(!sender.is_idle(), "after a close, nobody writes");
    }

    #[test]
    fn a_writer_that_took_nothing_still_keeps_the_sender_from_writing_until_it_is_done() {
        // The writer writes its own replies (a pong) in a batch of its own: the sender must not
        // write into the middle of it.
        let (sender, receiver) = outbox::<u8>();
        assert!(receiver.take_all().is_empty());
        assert!(!sender.is_idle(), "the writer is writing its pong");
        receiver.written(false);
        assert!(sender.is_idle());
    }

    #[test]
    fn a_held_item_wakes_nobody_and_goes_first_whoever_writes_first() {
        // The writer writes first.
        let (sender, receiver) = outbox_holding(0);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(receiver.poll_ready(&mut cx).is_pending(), "a held item alone is not ready");
        assert!(sender.is_idle(), "the sender may write (the held item first)");
        sender.push_all([1, 2]);
        assert!(receiver.poll_ready(&mut cx).is_ready());
        assert_eq!(receiver.take_all(), [0, 1, 2]);
        receiver.written(false);
        assert_eq!(sender.take_held(), None, "written once");

        // The sender writes first.
        let (sender, receiver) = outbox_holding(0);
        assert_eq!(sender.take_held(), Some(0));
        assert_eq!(sender.take_held(), None);
        sender.push_all([1]);
        assert_eq!(receiver.take_all(), [1]);

        // Nothing ever follows it: it is not written.
        let (sender, receiver) = outbox_holding(0);
        drop(sender);
        assert_eq!(receiver.poll_ready(&mut cx), Poll::Ready(false));
    }
}
