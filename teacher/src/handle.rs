//! A long-lived engine on its own thread that many callers submit to concurrently, so requests
//! arriving from different connections batch together (what `distill serve` needs).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::backend::{Cancel, GenRequest, GenStats};
use crate::engine::{Engine, Poll, RequestSource, Update};
use crate::{Error, Result};

/// Internal request id → (the caller's key, where the caller listens).
type Routes = Rc<RefCell<HashMap<String, (String, Sender<Update>)>>>;

struct Job {
    request: GenRequest,
    reply: Sender<Update>,
}

/// Handle to an engine running on a worker thread. Each [`submit`](Self::submit) gets its own
/// stream of [`Update`]s; the worker batches everything submitted. Dropping the handle (or
/// [`shutdown`](Self::shutdown)) lets the worker finish what it has and stop.
pub struct EngineHandle {
    jobs: Option<Sender<Job>>,
    worker: Option<JoinHandle<Result<GenStats>>>,
    cancel: Cancel,
}

impl EngineHandle {
    /// Starts the worker thread.
    pub fn spawn(engine: Arc<Engine>) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let cancel = Cancel::new();
        let worker_cancel = cancel.clone();
        let worker = std::thread::Builder::new()
            .name("distill-engine".into())
            .spawn(move || {
                let replies = Rc::new(RefCell::new(
                    HashMap::<String, (String, Sender<Update>)>::new(),
                ));
                let mut source = ChannelSource {
                    rx,
                    replies: replies.clone(),
                    next_id: 0,
                };
                let mut route = |update: Update| -> ControlFlow<()> {
                    let mut replies = replies.borrow_mut();
                    let (id, update, last) = match update {
                        Update::Progress { .. } => return ControlFlow::Continue(()),
                        Update::Delta {
                            key,
                            text,
                            logprobs,
                        } => {
                            let caller = replies.get(&key).map(|(k, _)| k.clone());
                            let Some(caller) = caller else {
                                return ControlFlow::Break(());
                            };
                            let delta = Update::Delta {
                                key: caller,
                                text,
                                logprobs,
                            };
                            (key, delta, false)
                        }
                        Update::Done(mut output) => {
                            let id = std::mem::take(&mut output.key);
                            output.key =
                                replies.get(&id).map(|(k, _)| k.clone()).unwrap_or_default();
                            (id, Update::Done(output), true)
                        }
                        Update::Failed { key, error } => {
                            let caller = replies
                                .get(&key)
                                .map(|(k, _)| k.clone())
                                .unwrap_or_default();
                            (key, Update::Failed { key: caller, error }, true)
                        }
                    };
                    let sent = replies
                        .get(&id)
                        .is_some_and(|(_, tx)| tx.send(update).is_ok());
                    if last || !sent {
                        replies.remove(&id);
                    }
                    if sent {
                        ControlFlow::Continue(())
                    } else {
                        // The caller hung up: drop its sequence.
                        ControlFlow::Break(())
                    }
                };
                engine.run(&mut source, &worker_cancel, &mut route)
            });
        match worker {
            Ok(worker) => Self {
                jobs: Some(jobs),
                worker: Some(worker),
                cancel,
            },
            // Thread creation only fails when the OS is out of resources; submits then fail.
            Err(e) => {
                tracing::error!("cannot start the engine thread: {e}");
                Self {
                    jobs: None,
                    worker: None,
                    cancel,
                }
            }
        }
    }

    /// Queues a request. Its updates (`Delta`s, then one `Done` or `Failed`) arrive on the
    /// returned receiver, keyed by the request's own key; dropping the receiver abandons the
    /// request at the engine's next step.
    pub fn submit(&self, request: GenRequest) -> Result<Receiver<Update>> {
        let (reply, rx) = mpsc::channel();
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Error::Backend("the engine thread is not running".into()))?;
        jobs.send(Job { request, reply })
            .map_err(|_| Error::Backend("the engine thread has stopped".into()))?;
        Ok(rx)
    }

    /// Stops taking requests, lets live ones finish, and returns the worker's totals (or the
    /// error that stopped it).
    pub fn shutdown(mut self) -> Result<GenStats> {
        self.jobs = None;
        self.join()
    }

    /// Drops live requests and stops as soon as possible.
    pub fn abort(mut self) -> Result<GenStats> {
        self.cancel.cancel();
        self.jobs = None;
        self.join()
    }

    fn join(&mut self) -> Result<GenStats> {
        match self.worker.take() {
            Some(worker) => worker
                .join()
                .map_err(|_| Error::Backend("the engine thread panicked".into()))?,
            None => Ok(GenStats::default()),
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.jobs = None;
        if let Err(e) = self.join() {
            tracing::error!("engine thread: {e}");
        }
    }
}

/// Jobs from the channel; each gets an internal key so callers' keys may collide.
struct ChannelSource {
    rx: Receiver<Job>,
    replies: Routes,
    next_id: u64,
}

impl RequestSource for ChannelSource {
    fn poll(&mut self, wait: bool) -> Poll {
        let job = if wait {
            match self.rx.recv() {
                Ok(job) => job,
                Err(_) => return Poll::Exhausted,
            }
        } else {
            match self.rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty) => return Poll::Pending,
                Err(TryRecvError::Disconnected) => return Poll::Exhausted,
            }
        };
        let Job { mut request, reply } = job;
        let id = format!("#{}", self.next_id);
        self.next_id += 1;
        let caller = std::mem::replace(&mut request.key, id.clone());
        self.replies.borrow_mut().insert(id, (caller, reply));
        Poll::Ready(request)
    }
}
