//! One client's replies, in the order its requests came.
//!
//! A session's reader reserves an entry per request as it routes it; a server connection fills
//! the entry through the [`ReplyTo`] it was handed with the job; the session's writer takes
//! entries from the front once they are complete. Entries are filled in any order (each server
//! answers at its own pace) and written in request order. One mutex guards the queue; the writer
//! is woken only when the entry at the front becomes complete, the reader only when it waits for
//! room or the writer has gone.

use crate::router::GatherMerge;
use crate::upstream::queue::store;
use crate::upstream::{Reply, UpstreamError};
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::ops::DerefMut;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// What one request is answered with.
#[derive(Debug)]
pub enum Entry {
    /// Answered by the proxy.
    Ready(Bytes),
    /// Send these bytes, then close the connection.
    Close(Bytes),
    /// One server's reply, passed through (`None` until it comes).
    One(Option<Reply>),
    /// Several servers' replies, merged once `left` reaches 0.
    Gather {
        left: usize,
        parts: Vec<Option<Reply>>,
        merge: GatherMerge,
    },
}

impl Entry {
    /// Reply bytes it holds.
    fn held(&self) -> usize {
        let len = |r: &Option<Reply>| match r {
            Some(Ok(b)) => b.len(),
            _ => 0,
        };
        match self {
            Entry::Ready(b) | Entry::Close(b) => b.len(),
            Entry::One(r) => len(r),
            Entry::Gather { parts, .. } => parts.iter().map(len).sum(),
        }
    }

    fn complete(&self) -> bool {
        match self {
            Entry::One(r) => r.is_some(),
            Entry::Gather { left, .. } => *left == 0,
            Entry::Ready(_) | Entry::Close(_) => true,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Sequence number of `entries[0]`.
    head: u64,
    entries: VecDeque<Entry>,
    /// Reply bytes held by `entries`.
    held: usize,
    /// The writer, waiting for the front entry to complete.
    writer: Option<Waker>,
    /// The reader, waiting for room or for the writer to go.
    reader: Option<Waker>,
    /// The reader will reserve nothing more.
    finished: bool,
    /// The writer has stopped: nothing more will be written.
    gone: bool,
    /// The next entry reserved is to be written as nothing (Redis `CLIENT REPLY OFF|SKIP`).
    silence_next: bool,
    /// Sequence numbers of reserved entries written as nothing, oldest first.
    silent: VecDeque<u64>,
}

/// A session's queue of replies owed. No more entries are reserved while it has `limit` of
/// them or holds `max_bytes` of replies the client has not taken (it is not reading).
#[derive(Debug)]
pub struct Replies {
    inner: Mutex<Inner>,
    limit: usize,
    max_bytes: usize,
}

impl Replies {
    pub fn new(limit: usize, max_bytes: usize) -> Arc<Replies> {
        Arc::new(Replies {
            inner: Mutex::new(Inner::default()),
            limit: limit.max(1),
            max_bytes,
        })
    }

    fn full(&self, g: &Inner) -> bool {
        g.entries.len() >= self.limit || g.held >= self.max_bytes
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the queue consistent (each change is one step).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append an entry; its sequence number, or `None` once the writer has gone.
    fn reserve(&self, e: Entry) -> Option<u64> {
        let mut g = self.lock();
        if g.gone {
            return None;
        }
        let wake = g.entries.is_empty() && e.complete();
        g.held += e.held();
        let seq = g.head + g.entries.len() as u64;
        if std::mem::take(&mut g.silence_next) {
            g.silent.push_back(seq);
        }
        g.entries.push_back(e);
        let w = if wake { g.writer.take() } else { None };
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
        Some(seq)
    }

    /// Queue a reply the proxy already has (`close`: then close the connection). False once the
    /// writer has gone.
    pub fn ready(&self, bytes: Bytes, close: bool) -> bool {
        self.reserve(if close {
            Entry::Close(bytes)
        } else {
            Entry::Ready(bytes)
        })
        .is_some()
    }

    /// Write the next entry reserved (whatever answers it) as nothing, keeping a close: the
    /// client asked for no reply to that request (Redis `CLIENT REPLY OFF|SKIP`).
    pub fn silence_next(&self) {
        self.lock().silence_next = true;
    }

    /// Reserve the entry for one server's reply.
    pub fn expect_one(self: &Arc<Self>) -> Option<ReplyTo> {
        let seq = self.reserve(Entry::One(None))?;
        Some(ReplyTo {
            q: Some(self.clone()),
            seq,
            part: 0,
        })
    }

    /// Reserve the entry for a split request's `n` replies, merged by `merge`.
    pub fn expect_gather(self: &Arc<Self>, n: usize, merge: GatherMerge) -> Option<Vec<ReplyTo>> {
        let seq = self.reserve(Entry::Gather {
            left: n,
            parts: (0..n).map(|_| None).collect(),
            merge,
        })?;
        Some(
            (0..n)
                .map(|part| ReplyTo {
                    q: Some(self.clone()),
                    seq,
                    part,
                })
                .collect(),
        )
    }

    fn fill(&self, seq: u64, part: usize, reply: Reply) {
        let mut g = self.lock();
        if g.gone {
            return;
        }
        let Some(i) = seq.checked_sub(g.head).map(|i| i as usize) else {
            return;
        };
        let Some(e) = g.entries.get_mut(i) else {
            return;
        };
        let len = reply.as_ref().map_or(0, Bytes::len);
        let slot = match e {
            Entry::One(r @ None) => Some(r),
            Entry::Gather { left, parts, .. } => match parts.get_mut(part) {
                Some(p @ None) => {
                    *left -= 1;
                    Some(p)
                }
                _ => None,
            },
            _ => None,
        };
        let Some(slot) = slot else {
            return;
        };
        *slot = Some(reply);
        g.held += len;
        let e = &g.entries[i];
        let w = if i == 0 && e.complete() { g.writer.take() } else { None };
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Whether another entry can be reserved now.
    pub fn has_room(&self) -> bool {
        let g = self.lock();
        !g.gone && !self.full(&g)
    }

    /// Wait until there is room for another entry: false once the writer has gone.
    pub async fn room(&self) -> bool {
        poll_fn(|cx| {
            let mut g = self.lock();
            if g.gone {
                Poll::Ready(false)
            } else if !self.full(&g) {
                Poll::Ready(true)
            } else {
                store(&mut g.reader, cx);
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves when the writer has gone.
    pub async fn gone(&self) {
        poll_fn(|cx| {
            let mut g = self.lock();
            if g.gone {
                Poll::Ready(())
            } else {
                store(&mut g.reader, cx);
                Poll::Pending
            }
        })
        .await
    }

    /// The reader is done: the writer ends once every entry is written.
    pub fn finish(&self) {
        let mut g = self.lock();
        g.finished = true;
        let w = g.writer.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Move the complete entries at the front into `out`, waiting for at least one. False when
    /// the reader has finished and nothing is left.
    pub async fn take(&self, out: &mut Vec<Entry>) -> bool {
        poll_fn(|cx| {
            let mut g = self.lock();
            let (n, reader) = self.take_locked(g.deref_mut(), out);
            if n > 0 {
                drop(g);
                if let Some(w) = reader {
                    w.wake();
                }
                return Poll::Ready(true);
            }
            if g.finished && g.entries.is_empty() {
                return Poll::Ready(false);
            }
            store(&mut g.writer, cx);
            Poll::Pending
        })
        .await
    }

    /// Move the complete entries at the front into `out` without waiting.
    pub fn take_now(&self, out: &mut Vec<Entry>) {
        let mut g = self.lock();
        let (_, reader) = self.take_locked(g.deref_mut(), out);
        drop(g);
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Take the complete entries at the front: how many, and the reader to wake if that made
    /// room it was waiting for.
    fn take_locked(&self, g: &mut Inner, out: &mut Vec<Entry>) -> (usize, Option<Waker>) {
        let was_full = self.full(g);
        let mut n = 0;
        while g.entries.front().is_some_and(Entry::complete) {
            if let Some(mut e) = g.entries.pop_front() {
                g.held -= e.held();
                if g.silent.front() == Some(&g.head) {
                    g.silent.pop_front();
                    e = match e {
                        Entry::Close(_) => Entry::Close(Bytes::new()),
                        _ => Entry::Ready(Bytes::new()),
                    };
                }
                out.push(e);
            }
            g.head += 1;
            n += 1;
        }
        let reader = if n > 0 && was_full { g.reader.take() } else { None };
        (n, reader)
    }

    /// The writer stops: drop what is owed and tell the reader.
    pub fn close(&self) {
        let mut g = self.lock();
        g.gone = true;
        let entries = std::mem::take(&mut g.entries);
        let w = g.reader.take();
        drop(g);
        drop(entries);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Entries reserved and not yet taken by the writer.
    pub fn owed(&self) -> usize {
        self.lock().entries.len()
    }
}

/// Where one server reply goes: an entry (and part) of a client's [`Replies`]. Dropped without
/// a reply, it answers "connection lost".
#[derive(Debug)]
pub struct ReplyTo {
    q: Option<Arc<Replies>>,
    seq: u64,
    part: usize,
}

impl ReplyTo {
    /// Deliver the reply.
    pub fn send(mut self, reply: Reply) {
        if let Some(q) = self.q.take() {
            q.fill(self.seq, self.part, reply);
        }
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(q) = self.q.take() {
            q.fill(
                self.seq,
                self.part,
                Err(UpstreamError::Lost {
                    server: "the server".into(),
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    fn bytes_of(e: &Entry) -> Vec<u8> {
        match e {
            Entry::Ready(b) | Entry::Close(b) => b.to_vec(),
            Entry::One(Some(Ok(b))) => b.to_vec(),
            Entry::One(Some(Err(e))) => e.to_string().into_bytes(),
            other => panic!("not a single reply: {other:?}"),
        }
    }

    fn take_now(q: &Replies) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        {
            let mut fut = std::pin::pin!(q.take(&mut out));
            let _ = fut.as_mut().poll(&mut cx);
        }
        out
    }

    use std::future::Future;

    #[test]
    fn a_silenced_entry_is_taken_as_nothing_whatever_fills_it() {
        let q = Replies::new(16, 1 << 20);
        q.silence_next();
        let a = q.expect_one().unwrap();
        assert!(q.ready(Bytes::from_static(b"b"), false));
        q.silence_next();
        assert!(q.ready(Bytes::from_static(b"c"), false));
        q.silence_next();
        assert!(q.ready(Bytes::from_static(b"bye"), true));
        a.send(Ok(Bytes::from_static(b"a")));
        let got = take_now(&q);
        assert_eq!(got.iter().map(bytes_of).collect::<Vec<_>>(), [&b""[..], b"b", b"", b""]);
        assert!(matches!(got[3], Entry::Close(_)), "a silenced close still closes");
    }

    #[test]
    fn replies_filled_out_of_order_are_taken_in_order() {
        let q = Replies::new(16, 1 << 20);
        let a = q.expect_one().unwrap();
        let b = q.expect_one().unwrap();
        assert!(q.ready(Bytes::from_static(b"c"), false));
        b.send(Ok(Bytes::from_static(b"b")));
        assert!(take_now(&q).is_empty(), "the front is not answered yet");
        a.send(Ok(Bytes::from_static(b"a")));
        let got: Vec<Vec<u8>> = take_now(&q).iter().map(bytes_of).collect();
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(q.owed(), 0);
    }

    #[test]
    fn a_dropped_reply_to_answers_connection_lost() {
        let q = Replies::new(16, 1 << 20);
        drop(q.expect_one().unwrap());
        let got = take_now(&q);
        assert_eq!(bytes_of(&got[0]), b"connection to the server lost");
    }

    #[test]
    fn a_gather_completes_when_every_part_has_answered() {
        let q = Replies::new(16, 1 << 20);
        let mut parts = q.expect_gather(3, GatherMerge::McAllOk).unwrap();
        parts.pop().unwrap().send(Ok(Bytes::from_static(b"OK\r\n")));
        parts.remove(0).send(Ok(Bytes::from_static(b"OK\r\n")));
        assert!(take_now(&q).is_empty());
        drop(parts);
        match &take_now(&q)[..] {
            [Entry::Gather { left: 0, parts, .. }] => {
                assert!(parts[1].as_ref().unwrap().is_err(), "the dropped part reads as lost")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn room_runs_out_while_unwritten_replies_hold_max_bytes() {
        let q = Replies::new(100, 10);
        let a = q.expect_one().unwrap();
        assert!(q.has_room());
        a.send(Ok(Bytes::from_static(b"0123456789")));
        assert!(!q.has_room(), "10 bytes held");
        assert_eq!(take_now(&q).len(), 1);
        assert!(q.has_room(), "taken by the writer");
    }

    #[test]
    fn room_runs_out_at_the_limit_and_nothing_is_reserved_once_the_writer_is_gone() {
        let q = Replies::new(2, 1 << 20);
        let _a = q.expect_one().unwrap();
        let _b = q.expect_one().unwrap();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let fut = q.room();
        let mut fut = std::pin::pin!(fut);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        q.close();
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(false));
        assert!(q.expect_one().is_none());
        assert!(!q.ready(Bytes::new(), false));
    }
}
