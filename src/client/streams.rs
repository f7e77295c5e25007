//! The routing client's streams: a `ReadStream` that resumes on another node from the next
//! offset not yet delivered, and pipelined appends that open a new `AppendStream` on the
//! leader and send the unacknowledged requests again.
//!
//! Both keep the order their plain counterparts promise (responses in offset order,
//! acknowledgements in request order) across reconnections, and both retry exactly as
//! [`RoutingClient::recover`] decides, with the budget counted from the last answer that
//! made progress. Never: deliver a record twice (reads resume after the last delivered
//! offset) or hold more than the window of unacknowledged appends.
//!
//! Appends are resent as they were: idempotent ones (stamped by `Sequences`) carry their
//! sequence again and are answered with their original offsets; plain ones resent after a
//! transport failure may be written twice. Those refused with a leader hint were not written.

use std::collections::VecDeque;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::Streaming;

use super::ReadOptions;
use super::retry::Attempts;
use super::routing::{Route, RoutingClient};
use crate::proto::v1::{AppendRequest, AppendResponse, ReadResponse};

/// Most unacknowledged appends [`RoutingClient::append_pipelined`] allows.
pub const APPEND_WINDOW_MAX: usize = 4096;

struct ReadState {
    client: RoutingClient,
    topic: String,
    partition: u32,
    /// The next offset not yet delivered: where a reopened stream starts.
    next_offset: u64,
    options: ReadOptions,
    follow: bool,
    open: Option<(String, Streaming<ReadResponse>)>,
    attempts: Attempts,
    done: bool,
}

impl RoutingClient {
    /// Reads `topic`/`partition` from `offset` on as a stream (with `follow`, tailing the
    /// log), from any replica. When the node fails or refuses, the stream is reopened
    /// where [`RoutingClient::recover`] says, from the offset after the last record
    /// delivered; the retry budget counts from the last answer. After an error item the
    /// stream ends.
    pub fn read_stream(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: ReadOptions,
        follow: bool,
    ) -> impl Stream<Item = Result<ReadResponse, Status>> + Send + 'static {
        let state = ReadState {
            client: self.clone(),
            topic: topic.to_string(),
            partition,
            next_offset: offset,
            options,
            follow,
            open: None,
            attempts: self.attempts(),
            done: false,
        };
        futures::stream::unfold(state, next_read)
    }

    /// Sends every request from `requests`, in order, on pipelined `AppendStream`s to the
    /// leader of `topic`/`partition`, with at most `window` unacknowledged (1 to
    /// [`APPEND_WINDOW_MAX`]). Returns the acknowledgements in request order; the stream
    /// ends after the last one, or after an error item (nothing more is sent then).
    ///
    /// Through a leader change or a lost node it opens a new stream and sends the
    /// unacknowledged requests again, in order: after a transport failure some of them
    /// may have been written already; idempotent ones are then answered with their
    /// original offsets, plain ones are written twice.
    pub fn append_pipelined(
        &self,
        topic: &str,
        partition: Option<u32>,
        requests: mpsc::Receiver<AppendRequest>,
        window: usize,
    ) -> impl Stream<Item = Result<AppendResponse, Status>> + Send + 'static {
        let window = window.clamp(1, APPEND_WINDOW_MAX);
        let (out, acks) = mpsc::channel(window);
        let pipeline = Pipeline {
            client: self.clone(),
            topic: topic.to_string(),
            partition,
            window,
            unacked: VecDeque::with_capacity(window),
            input_open: true,
        };
        tokio::spawn(pipeline.run(requests, out));
        ReceiverStream::new(acks)
    }
}

async fn next_read(mut s: ReadState) -> Option<(Result<ReadResponse, Status>, ReadState)> {
    if s.done {
        return None;
    }
    let ReadState {
        client,
        topic,
        partition,
        next_offset,
        options,
        follow,
        open,
        attempts,
        done,
    } = &mut s;
    let route = Route::Replica {
        topic,
        partition: *partition,
    };
    // Bounded: each pass ends in an item, the end, or `recover`, which gives up after
    // `attempts_max` attempts or the budget.
    let result = loop {
        if open.is_none() {
            let (addr, connection) = match client.connect_for(route, attempts).await {
                Ok(connected) => connected,
                Err(status) => break Err(status),
            };
            let opening =
                connection.read_stream(topic, *partition, *next_offset, *options, *follow);
            match tokio::time::timeout(attempts.remaining(), opening).await {
                Ok(Ok(stream)) => {
                    client.remember(route, &addr);
                    *open = Some((addr, stream));
                }
                Ok(Err(status)) => match client.recover(route, &addr, status, attempts).await {
                    Ok(()) => continue,
                    Err(status) => break Err(status),
                },
                Err(_) => {
                    let status = Status::deadline_exceeded(format!(
                        "{addr} did not open the ReadStream within the retry budget"
                    ));
                    break Err(attempts.give_up(&status));
                }
            }
        }
        let (addr, stream) = open.as_mut().expect("opened above");
        let status = match stream.message().await {
            Ok(Some(response)) => {
                let after_last = response.records.last().map_or(0, |r| r.offset + 1);
                *next_offset = (*next_offset).max(response.next_offset).max(after_last);
                attempts.reset();
                break Ok(response);
            }
            Ok(None) if !*follow => {
                *done = true;
                return None;
            }
            // A following stream only ends when its node stops: resume elsewhere.
            Ok(None) => Status::unavailable(format!("{addr} ended the ReadStream")),
            Err(status) => status,
        };
        let addr = std::mem::take(addr);
        *open = None;
        if let Err(status) = client.recover(route, &addr, status, attempts).await {
            break Err(status);
        }
    };
    *done = result.is_err();
    Some((result, s))
}

/// The state of one [`RoutingClient::append_pipelined`].
struct Pipeline {
    client: RoutingClient,
    topic: String,
    partition: Option<u32>,
    window: usize,
    /// Sent and not acknowledged, in order: what a new stream sends first.
    unacked: VecDeque<AppendRequest>,
    input_open: bool,
}

/// How one stream of a pipeline ended.
enum StreamEnd {
    /// Every request was acknowledged and the input is closed, or the caller went away.
    Done,
    Failed {
        addr: String,
        status: Status,
    },
}

impl Pipeline {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<AppendRequest>,
        out: mpsc::Sender<Result<AppendResponse, Status>>,
    ) {
        let client = self.client.clone();
        let topic = self.topic.clone();
        let route = Route::Leader {
            topic: &topic,
            partition: self.partition,
        };
        let mut attempts = client.attempts();
        // Bounded: every pass that does not finish goes through `recover`, which gives up
        // after `attempts_max` attempts or the budget (counted from the last ack).
        loop {
            let end = self
                .one_stream(route, &mut attempts, &mut requests, &out)
                .await;
            let failure = match end {
                Ok(StreamEnd::Done) => return,
                Ok(StreamEnd::Failed { addr, status }) => {
                    client.recover(route, &addr, status, &mut attempts).await
                }
                Err(status) => Err(status),
            };
            if let Err(status) = failure {
                // The caller may be gone; then nobody needs the error.
                let _ = out.send(Err(status)).await;
                return;
            }
        }
    }

    /// Opens a stream where `route` goes, sends the unacknowledged requests again, then
    /// pipelines new ones until the input is done or the stream fails.
    async fn one_stream(
        &mut self,
        route: Route<'_>,
        attempts: &mut Attempts,
        requests: &mut mpsc::Receiver<AppendRequest>,
        out: &mpsc::Sender<Result<AppendResponse, Status>>,
    ) -> Result<StreamEnd, Status> {
        let (addr, connection) = self.client.connect_for(route, attempts).await?;
        let (tx, rx) = mpsc::channel(self.window);
        for request in &self.unacked {
            tx.try_send(request.clone())
                .expect("the channel holds the whole window");
        }
        let mut acks = match connection.append_stream(ReceiverStream::new(rx)).await {
            Ok(acks) => acks,
            Err(status) => return Ok(StreamEnd::Failed { addr, status }),
        };
        // Bounded by the input: each pass takes a request or an ack, or fails.
        loop {
            if !self.input_open && self.unacked.is_empty() {
                return Ok(StreamEnd::Done);
            }
            let may_send = self.input_open && self.unacked.len() < self.window;
            let waiting = !self.unacked.is_empty();
            tokio::select! {
                request = requests.recv(), if may_send => match request {
                    Some(request) => {
                        self.unacked.push_back(request.clone());
                        // A closed request side means the stream failed: its error comes
                        // on `acks`, and the request is resent with the others.
                        let _ = tx.send(request).await;
                    }
                    None => self.input_open = false,
                },
                ack = acks.next(), if waiting => {
                    let status = match ack {
                        Some(Ok(ack)) => {
                            let request = self.unacked.pop_front().expect("waiting for an ack");
                            if ack.correlation_id != request.correlation_id {
                                return Err(Status::internal(format!(
                                    "{addr} acknowledged correlation_id {} while {} was next",
                                    ack.correlation_id, request.correlation_id
                                )));
                            }
                            attempts.reset();
                            if out.send(Ok(ack)).await.is_err() {
                                return Ok(StreamEnd::Done);
                            }
                            continue;
                        }
                        Some(Err(status)) => status,
                        None => Status::unavailable(format!(
                            "{addr} ended the AppendStream with {} appends unacknowledged",
                            self.unacked.len()
                        )),
                    };
                    return Ok(StreamEnd::Failed { addr, status });
                }
                () = tokio::time::sleep(attempts.remaining()), if waiting => {
                    let status = Status::deadline_exceeded(format!(
                        "{addr} acknowledged nothing within the retry budget"
                    ));
                    return Err(attempts.give_up(&status));
                }
            }
        }
    }
}
