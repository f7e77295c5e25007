//! A precise timer for the open-loop schedule: one OS thread that sleeps to the earliest
//! deadline and wakes the tasks waiting on it.
//!
//! Owns: the heap of pending deadlines and the thread that fires them.
//! Must never: fire a deadline early, or block a tokio worker.
//!
//! Why: tokio's timer wheel has a 1 ms granularity and rounds a deadline up to the next tick,
//! so a producer that sleeps until its intended send time sends up to 1 ms late, and the
//! coordinated-omission correction (latency from the intended time) then charges that lateness
//! to the server. A futex wait with a timeout is precise to tens of microseconds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

/// Handle to the pacer thread; the thread ends when every handle is dropped.
#[derive(Clone)]
pub struct Pacer {
    tx: mpsc::Sender<(Instant, oneshot::Sender<()>)>,
}

/// The process's pacer, started on first use; its thread idles in a blocking receive.
pub fn global() -> &'static Pacer {
    static PACER: std::sync::OnceLock<Pacer> = std::sync::OnceLock::new();
    PACER.get_or_init(Pacer::start)
}

impl Pacer {
    pub fn start() -> Pacer {
        let (tx, rx) = mpsc::channel::<(Instant, oneshot::Sender<()>)>();
        std::thread::Builder::new()
            .name("walrs-bench-pacer".to_owned())
            .spawn(move || run(rx))
            .expect("spawn the bench pacer thread");
        Pacer { tx }
    }

    /// Resolves at `deadline` (never before it).
    pub async fn sleep_until(&self, deadline: Instant) {
        if deadline <= Instant::now() {
            return;
        }
        let (wake, woken) = oneshot::channel();
        if self.tx.send((deadline, wake)).is_err() {
            // The pacer is gone (cannot happen while a handle lives): fall back to tokio.
            tokio::time::sleep_until(deadline.into()).await;
            return;
        }
        // An Err means the pacer thread ended; either way the deadline is over or moot.
        let _ = woken.await;
    }
}

fn run(rx: mpsc::Receiver<(Instant, oneshot::Sender<()>)>) {
    // Ties are broken by arrival order; stale wakes (their waiter gave up) are harmless.
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut waiters: std::collections::HashMap<u64, oneshot::Sender<()>> = Default::default();
    let mut next_id = 0u64;
    loop {
        let now = Instant::now();
        while let Some(Reverse((deadline, id))) = heap.peek().copied() {
            if deadline > now {
                break;
            }
            heap.pop();
            if let Some(wake) = waiters.remove(&id) {
                // The waiter may have stopped waiting (its select! took another branch).
                let _ = wake.send(());
            }
        }
        let message = match heap.peek() {
            Some(Reverse((deadline, _))) => {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(message) => Some(message),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            None => match rx.recv() {
                Ok(message) => Some(message),
                Err(_) => return,
            },
        };
        if let Some((deadline, wake)) = message {
            heap.push(Reverse((deadline, next_id)));
            waiters.insert(next_id, wake);
            next_id += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn never_early_and_in_deadline_order() {
        let pacer = Pacer::start();
        let start = Instant::now();
        let late = pacer.clone();
        let a = tokio::spawn(async move {
            late.sleep_until(start + Duration::from_millis(30)).await;
            Instant::now()
        });
        pacer.sleep_until(start + Duration::from_millis(10)).await;
        let first = Instant::now();
        let second = a.await.unwrap();
        assert!(first >= start + Duration::from_millis(10));
        assert!(second >= start + Duration::from_millis(30));
        assert!(first < second);
    }
}
