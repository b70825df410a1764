//! One client's replies, in the order its requests came.
//!
//! A session's reader reserves an entry per request as it routes it; a server connection fills
//! the entry through the [`ReplyTo`] it was handed with the job; the session's writer takes
//! entries from the front once they are complete. Entries are filled in any order (each server
//! answers at its own pace) and written in request order. One mutex guards the queue; the writer
//! is woken only when the entry at the front becomes complete, the reader only when it waits for
//! room or the writer has gone.

use crate::metrics::CommandTag;
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
    /// Server replies reserved and not yet arrived.
    unfilled: usize,
    /// What a reply not yet arrived is expected to weigh: the size of recent replies, rising at
    /// once to a larger one and decaying slowly. Starts high, so a new client's first burst of
    /// requests cannot ask for much more than the byte budget before any size is known.
    estimate: usize,
    /// The reader waits for room.
    wants_room: bool,
    /// The reader waits for every server reply reserved to arrive.
    wants_settled: bool,
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
/// them, or while the replies it holds plus those on their way (at the estimated size) reach
/// `max_bytes`: a client that does not read its replies costs about `max_bytes`, whatever
/// the size of its values.
#[derive(Debug)]
pub struct Replies {
    inner: Mutex<Inner>,
    limit: usize,
    max_bytes: usize,
}

/// The estimate never falls below this.
const MIN_ESTIMATE: usize = 64;

impl Replies {
    pub fn new(limit: usize, max_bytes: usize) -> Arc<Replies> {
        Arc::new(Replies {
            inner: Mutex::new(Inner {
                // Before any reply has come, half the budget each: two on their way at first,
                // more as small replies bring the estimate down (it falls an eighth per reply).
                estimate: (max_bytes / 2).max(MIN_ESTIMATE),
                ..Inner::default()
            }),
            limit: limit.max(1),
            max_bytes,
        })
    }

    fn full(&self, g: &Inner) -> bool {
        g.entries.len() >= self.limit || g.held.saturating_add(g.unfilled.saturating_mul(g.estimate)) >= self.max_bytes
    }

    /// The reader, if it waits for room and there is room now.
    fn room_made(&self, g: &mut Inner) -> Option<Waker> {
        if g.wants_room && !self.full(g) {
            g.wants_room = false;
            g.reader.take()
        } else {
            None
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the queue consistent (each change is one step).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append an entry; its sequence number, or `None` once the writer has gone.
    fn reserve(&self, e: Entry) -> Option<u64> {
        self.reserve_as(e, true)
    }

    /// [`Replies::reserve`]; `silenceable`: the entry is the reply to a request, which
    /// `CLIENT REPLY OFF|SKIP` may silence (a pushed message is not).
    fn reserve_as(&self, e: Entry, silenceable: bool) -> Option<u64> {
        let mut g = self.lock();
        if g.gone {
            return None;
        }
        let wake = g.entries.is_empty() && e.complete();
        g.held += e.held();
        g.unfilled += match &e {
            Entry::One(None) => 1,
            Entry::Gather { left, .. } => *left,
            _ => 0,
        };
        let seq = g.head + g.entries.len() as u64;
        if silenceable && std::mem::take(&mut g.silence_next) {
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

    /// Queue bytes the server pushed to the client (a pub/sub message), which no `CLIENT
    /// REPLY` setting silences. False once the writer has gone.
    pub fn push(&self, bytes: Bytes, close: bool) -> bool {
        let e = if close {
            Entry::Close(bytes)
        } else {
            Entry::Ready(bytes)
        };
        self.reserve_as(e, false).is_some()
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
            command: CommandTag::OTHER,
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
                    part: part as u32,
                    command: CommandTag::OTHER,
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
        let answered = reply.is_ok();
        *slot = Some(reply);
        g.held += len;
        g.unfilled -= 1;
        if answered {
            g.estimate = len.max(g.estimate - g.estimate / 8).max(MIN_ESTIMATE);
        }
        let e = &g.entries[i];
        let w = if i == 0 && e.complete() { g.writer.take() } else { None };
        let reader = if g.wants_settled && g.unfilled == 0 {
            g.wants_settled = false;
            g.reader.take()
        } else {
            self.room_made(&mut g)
        };
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
        if let Some(w) = reader {
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
                g.wants_room = false;
                Poll::Ready(true)
            } else {
                g.wants_room = true;
                store(&mut g.reader, cx);
                Poll::Pending
            }
        })
        .await
    }

    /// Server replies reserved and not arrived yet.
    pub fn unfilled(&self) -> usize {
        self.lock().unfilled
    }

    /// Reply bytes held, not yet written.
    pub fn held(&self) -> usize {
        self.lock().held
    }

    /// Wait until every server reply reserved so far has arrived (or the writer has gone): a
    /// session switching between shared and pinned connections waits for this, so its requests
    /// run on the servers in the order it sent them.
    pub async fn settled(&self) {
        poll_fn(|cx| {
            let mut g = self.lock();
            if g.gone || g.unfilled == 0 {
                g.wants_settled = false;
                Poll::Ready(())
            } else {
                g.wants_settled = true;
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
        let reader = if n > 0 { self.room_made(g) } else { None };
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
    part: u32,
    /// The command of the request, for the per-command latency histogram.
    command: CommandTag,
}

impl ReplyTo {
    /// The command whose reply this is (set by the [`crate::upstream::Outbox`] it is queued in).
    pub fn command(&self) -> CommandTag {
        self.command
    }

    pub(crate) fn set_command(&mut self, command: CommandTag) {
        self.command = command;
    }

    /// Deliver the reply.
    pub fn send(mut self, reply: Reply) {
        if let Some(q) = self.q.take() {
            q.fill(self.seq, self.part as usize, reply);
        }
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(q) = self.q.take() {
            q.fill(
                self.seq,
                self.part as usize,
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
        let q = Replies::new(100, 1000);
        let a = q.expect_one().unwrap();
        a.send(Ok(Bytes::from(vec![b'x'; 1000])));
        assert!(!q.has_room(), "1000 bytes held");
        assert_eq!(take_now(&q).len(), 1);
        assert!(q.has_room(), "taken by the writer");
    }

    /// Reserve while there is room, answer each with `len` bytes, let the writer take them:
    /// how many were in flight at once.
    fn round(q: &Arc<Replies>, len: usize) -> usize {
        let mut batch = Vec::new();
        while q.has_room() {
            batch.push(q.expect_one().unwrap());
        }
        let n = batch.len();
        for r in batch {
            r.send(Ok(Bytes::from(vec![b'v'; len])));
        }
        take_now(q);
        n
    }

    #[test]
    fn replies_on_their_way_count_at_the_size_of_recent_ones() {
        let q = Replies::new(1024, 4 << 20);
        // Before any reply has come, half the budget is assumed per reply.
        assert_eq!(round(&q, 64 << 10), 2);
        // 64 KB values: soon about budget / 64 KB in flight, however many the client sends.
        let n: Vec<usize> = (0..40).map(|_| round(&q, 64 << 10)).collect();
        assert!(n.iter().all(|&n| n <= 65), "{n:?}");
        assert!((60..=65).contains(n.last().unwrap()), "{n:?}");
        // 1 MB values: four.
        let n: Vec<usize> = (0..10).map(|_| round(&q, 1 << 20)).collect();
        assert!(n[1..].iter().all(|&n| n <= 4), "{n:?}");
        // Small replies bring the estimate down again: pipelining resumes up to the slot limit.
        let n: Vec<usize> = (0..30).map(|_| round(&q, 5)).collect();
        assert_eq!(*n.last().unwrap(), 1024, "{n:?}");
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
