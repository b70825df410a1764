//! A many-producer, one-consumer queue taken in batches: one mutex around a `VecDeque`.
//!
//! Cheaper than a channel for the proxy's hand-offs: producers push a whole batch under one
//! lock, the consumer takes everything queued under one lock, and nobody is woken who is not
//! waiting. Bounded: producers wait while `limit` items are queued.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

#[derive(Debug)]
struct Inner<T> {
    items: VecDeque<T>,
    /// The consumer, waiting for items (or for producers to be done).
    consumer: Option<Waker>,
    /// Producers waiting for room, or for the consumer to go.
    producers: Vec<Waker>,
    /// No more items will be pushed: the consumer ends once it has taken what is left.
    done: bool,
    /// The consumer has gone: pushes fail.
    closed: bool,
}

#[derive(Debug)]
pub struct Queue<T> {
    inner: Mutex<Inner<T>>,
    limit: usize,
}

/// Keep the waker of the task polling `cx` in `w` (cloned only when it is another task's).
pub(crate) fn store(w: &mut Option<Waker>, cx: &Context<'_>) {
    match w {
        Some(old) if old.will_wake(cx.waker()) => {}
        _ => *w = Some(cx.waker().clone()),
    }
}

impl<T> Queue<T> {
    pub fn new(limit: usize) -> Queue<T> {
        Queue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                consumer: None,
                producers: Vec::new(),
                done: false,
                closed: false,
            }),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Push every item of `items` (draining it), waiting while the queue is full. Returns false
    /// (leaving the rest in `items`) once the consumer has gone.
    pub async fn push(&self, items: &mut Vec<T>) -> bool {
        poll_fn(|cx| {
            let mut g = self.lock();
            loop {
                if g.closed {
                    return Poll::Ready(false);
                }
                if items.is_empty() {
                    return Poll::Ready(true);
                }
                let room = self.limit.saturating_sub(g.items.len());
                if room == 0 {
                    if !g.producers.iter().any(|w| w.will_wake(cx.waker())) {
                        g.producers.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                let n = room.min(items.len());
                g.items.extend(items.drain(..n));
                if let Some(w) = g.consumer.take() {
                    drop(g);
                    w.wake();
                    g = self.lock();
                }
            }
        })
        .await
    }

    /// Move up to `max` queued items into `out`, waiting for at least one. Returns 0 once the
    /// producers are done and nothing is left.
    pub async fn take(&self, out: &mut impl Extend<T>, max: usize) -> usize {
        poll_fn(|cx| {
            let mut g = self.lock();
            let (n, waiting) = self.drain(&mut g, out, max);
            if n == 0 && !g.done {
                store(&mut g.consumer, cx);
                return Poll::Pending;
            }
            drop(g);
            waiting.into_iter().for_each(Waker::wake);
            Poll::Ready(n)
        })
        .await
    }

    /// Move up to `max` queued items into `out` without waiting.
    pub fn take_now(&self, out: &mut impl Extend<T>, max: usize) -> usize {
        let mut g = self.lock();
        let (n, waiting) = self.drain(&mut g, out, max);
        drop(g);
        waiting.into_iter().for_each(Waker::wake);
        n
    }

    /// Take up to `max` items; the producers to wake if that made room.
    fn drain(&self, g: &mut Inner<T>, out: &mut impl Extend<T>, max: usize) -> (usize, Vec<Waker>) {
        let n = g.items.len().min(max);
        if n == 0 {
            return (0, Vec::new());
        }
        let was_full = g.items.len() >= self.limit;
        out.extend(g.items.drain(..n));
        (
            n,
            if was_full {
                std::mem::take(&mut g.producers)
            } else {
                Vec::new()
            },
        )
    }

    /// Producers are done: the consumer takes what is left, then sees the end.
    pub fn finish(&self) {
        let mut g = self.lock();
        g.done = true;
        let w = g.consumer.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// The consumer goes: pushes fail from now on, and what is queued is dropped.
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        let items = std::mem::take(&mut g.items);
        let waiting = std::mem::take(&mut g.producers);
        drop(g);
        drop(items);
        for w in waiting {
            w.wake();
        }
    }

    /// Resolves once the consumer has gone.
    pub async fn closed(&self) {
        poll_fn(|cx| {
            let mut g = self.lock();
            if g.closed {
                Poll::Ready(())
            } else {
                if !g.producers.iter().any(|w| w.will_wake(cx.waker())) {
                    g.producers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }

    /// The producers are done and everything has been taken.
    pub fn is_finished(&self) -> bool {
        let g = self.lock();
        g.done && g.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Arc;

    fn poll<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn items_come_out_in_order_in_batches_of_at_most_max() {
        let q = Queue::new(100);
        let mut items: Vec<u32> = (0..10).collect();
        assert_eq!(poll(std::pin::pin!(q.push(&mut items))), Poll::Ready(true));
        assert!(items.is_empty());
        let mut out = Vec::new();
        assert_eq!(poll(std::pin::pin!(q.take(&mut out, 4))), Poll::Ready(4));
        assert_eq!(q.take_now(&mut out, 100), 6);
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        assert!(
            poll(std::pin::pin!(q.take(&mut out, 4))).is_pending(),
            "empty and not finished"
        );
    }

    #[test]
    fn a_full_queue_holds_the_rest_until_the_consumer_takes() {
        let q = Queue::new(3);
        let mut items: Vec<u32> = (0..5).collect();
        let mut push = Box::pin(q.push(&mut items));
        assert!(poll(push.as_mut()).is_pending());
        let mut out = Vec::new();
        assert_eq!(q.take_now(&mut out, 10), 3);
        assert_eq!(poll(push.as_mut()), Poll::Ready(true));
        drop(push);
        assert_eq!(q.take_now(&mut out, 10), 2);
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn finish_ends_the_consumer_after_the_rest_and_close_fails_pushes() {
        let q = Arc::new(Queue::new(10));
        let mut items = vec![1u32];
        assert_eq!(poll(std::pin::pin!(q.push(&mut items))), Poll::Ready(true));
        q.finish();
        assert!(!q.is_finished(), "an item is left");
        let mut out = Vec::new();
        assert_eq!(poll(std::pin::pin!(q.take(&mut out, 10))), Poll::Ready(1));
        assert_eq!(poll(std::pin::pin!(q.take(&mut out, 10))), Poll::Ready(0));
        assert!(q.is_finished());

        let q = Queue::new(10);
        q.close();
        let mut items = vec![7u32];
        assert_eq!(poll(std::pin::pin!(q.push(&mut items))), Poll::Ready(false));
        assert_eq!(items, vec![7], "a refused item stays with the producer");
        assert_eq!(poll(std::pin::pin!(q.closed())), Poll::Ready(()));
    }
}
