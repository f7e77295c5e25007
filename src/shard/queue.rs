//! One shard's request queue: the bounded channel from the bridge to the shard, with the
//! room in it counted by a semaphore and a gate the shard closes before it stops.
//!
//! Owns: the capacity bound (a caller first takes a permit for room, waiting at most its
//! timeout, then hands the command over with a `try_send` that cannot fail for capacity; the
//! permit travels in the queue and is released when the shard takes the command), and the
//! guarantee that every queued command is answered.
//! Must never: hand a command to the queue and then report that it was not queued (a
//! timeout is only possible before the hand-over), or leave a queued command's reply sender
//! alive in a queue nobody serves.
//!
//! Invariants: commands in the channel ≤ permits out ≤ capacity, so the hand-over never
//! finds the channel full. The gate is read-locked around every hand-over and write-locked
//! (closed) by the shard before it drains the queue one last time; after that nothing can
//! enter, so the drain answers everything that ever got in. [`QueueReceiver`]'s `Drop` closes
//! and drains, so this holds when the shard panics too.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::command::Command;
use super::error::Error;

/// A command in the queue, holding its share of the queue's room until the shard takes it.
pub(crate) struct Queued {
    command: Command,
    _room: OwnedSemaphorePermit,
}

impl Queued {
    /// The command; the room it took in the queue is released.
    pub fn into_command(self) -> Command {
        self.command
    }
}

struct Shared {
    room: Arc<Semaphore>,
    /// True once the shard stopped taking commands.
    closed: RwLock<bool>,
}

/// Why a command was not queued.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No room came free within the wait; nothing was queued.
    Full,
    /// The shard stopped; nothing was queued.
    Closed,
}

/// The bridge's end of a shard's queue.
pub(crate) struct QueueSender {
    tx: flume::Sender<Queued>,
    shared: Arc<Shared>,
}

/// The shard's end of its queue. Dropping it closes the queue and answers every command
/// still in it with an error (`ShuttingDown` normally, `ShardFailed` while panicking).
pub(crate) struct QueueReceiver {
    rx: flume::Receiver<Queued>,
    shared: Arc<Shared>,
    shard: usize,
}

/// A queue of `capacity` commands for shard `shard`.
pub(crate) fn queue(shard: usize, capacity: usize) -> (QueueSender, QueueReceiver) {
    assert!(
        capacity > 0,
        "shard {shard} queue capacity must be positive"
    );
    let (tx, rx) = flume::bounded(capacity);
    let shared = Arc::new(Shared {
        room: Arc::new(Semaphore::new(capacity)),
        closed: RwLock::new(false),
    });
    (
        QueueSender {
            tx,
            shared: shared.clone(),
        },
        QueueReceiver { rx, shared, shard },
    )
}

impl QueueSender {
    /// Queues `command`, waiting for room at most `wait` (`None`: as long as it takes).
    /// On `Ok` the command is queued and will be answered; on `Err` it was not queued (and
    /// is dropped, so its reply sender is too).
    pub async fn send(
        &self,
        command: Command,
        wait: Option<Duration>,
    ) -> std::result::Result<(), SendError> {
        // Room is usually free: take it without arming a timer (issue 14's hop trace).
        let room = match self.shared.room.clone().try_acquire_owned() {
            Ok(room) => room,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(SendError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let acquire = self.shared.room.clone().acquire_owned();
                match wait {
                    None => acquire.await.map_err(|_| SendError::Closed)?,
                    Some(wait) => match tokio::time::timeout(wait, acquire).await {
                        Ok(acquired) => acquired.map_err(|_| SendError::Closed)?,
                        Err(_) => return Err(SendError::Full),
                    },
                }
            }
        };
        // Not held across an await: the shard takes the write lock only to close the gate.
        let closed = self
            .shared
            .closed
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if *closed {
            return Err(SendError::Closed);
        }
        match self.tx.try_send(Queued {
            command,
            _room: room,
        }) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Disconnected(_)) => Err(SendError::Closed),
            Err(flume::TrySendError::Full(_)) => unreachable!(
                "shard queue full ({} queued, capacity {:?}) although a permit for room was held",
                self.tx.len(),
                self.tx.capacity()
            ),
        }
    }

    /// Commands waiting in the queue now.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Queues `command` from a test's plain thread, waiting for room as long as it takes.
    #[cfg(test)]
    pub fn send_blocking(&self, command: Command) {
        futures::executor::block_on(self.send(command, None)).expect("the shard's queue is open");
    }
}

impl QueueReceiver {
    /// The channel, for the runtimes to wait on.
    pub fn channel(&self) -> &flume::Receiver<Queued> {
        &self.rx
    }

    /// The next queued command, if one is waiting.
    pub fn try_recv(&self) -> Option<Command> {
        self.rx.try_recv().ok().map(Queued::into_command)
    }

    /// Commands waiting in the queue now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Closes the gate (nothing can be queued after this returns) and answers everything
    /// still queued with `error`.
    pub fn close_and_refuse(&self, error: impl Fn() -> Error) {
        *self
            .shared
            .closed
            .write()
            .unwrap_or_else(PoisonError::into_inner) = true;
        // Callers waiting for room learn at once that the shard is gone.
        self.shared.room.close();
        while let Ok(queued) = self.rx.try_recv() {
            queued.into_command().refuse(&error);
        }
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        let shard = self.shard;
        if std::thread::panicking() {
            self.close_and_refuse(|| Error::ShardFailed {
                shard,
                reason: "its thread panicked".to_owned(),
            });
        } else {
            self.close_and_refuse(|| Error::ShuttingDown);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;
    use crate::shard::error::Result;
    use crate::shard::results::AppendAck;

    fn append(tx: &QueueSender) -> oneshot::Receiver<Result<AppendAck>> {
        let (reply, ack) = oneshot::channel();
        tx.send_blocking(Command::Append {
            topic: Arc::from("t"),
            partition: 0,
            batch: crate::storage::LogLimits::default()
                .check(vec![crate::storage::Record::default()])
                .unwrap(),
            reply,
            trace: Default::default(),
        });
        ack
    }

    /// Regression: a shard that panicked left its queued commands (and their reply
    /// senders) alive in the channel, so their callers waited forever.
    #[test]
    fn a_panicking_shard_answers_everything_queued() {
        let (tx, rx) = queue(3, 4);
        let acks: Vec<_> = (0..4).map(|_| append(&tx)).collect();
        let shard = std::thread::spawn(move || {
            let _rx = rx;
            panic!("injected shard panic");
        });
        assert!(shard.join().is_err());
        for ack in acks {
            let err = futures::executor::block_on(ack)
                .expect("answered, not dropped")
                .unwrap_err();
            assert!(
                matches!(err, Error::ShardFailed { shard: 3, .. }),
                "a panicked shard fails its queue: {err}"
            );
        }
        // And nothing can be queued any more.
        let (reply, _ack) = oneshot::channel();
        let late = futures::executor::block_on(tx.send(Command::Shutdown { reply }, None));
        assert!(matches!(late, Err(SendError::Closed)));
    }

    /// Room is released when the shard takes a command, not when it answers it; a full
    /// queue refuses within the wait and queues nothing.
    #[tokio::test]
    async fn room_is_counted_by_permits_and_a_timeout_queues_nothing() {
        let (tx, rx) = queue(0, 2);
        let _a = append(&tx);
        let _b = append(&tx);
        let (reply, mut refused) = oneshot::channel();
        let full = tx
            .send(Command::Shutdown { reply }, Some(Duration::from_millis(5)))
            .await;
        assert!(matches!(full, Err(SendError::Full)));
        assert!(
            refused.try_recv().is_err(),
            "the refused command was dropped"
        );
        assert_eq!(rx.len(), 2, "the timed-out command was not queued");
        let _first = rx.try_recv().expect("queued");
        let _c = append(&tx);
        assert_eq!(rx.len(), 2);
    }
}
