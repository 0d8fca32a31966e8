//! The engine thread behind `distill serve`: HTTP handlers queue jobs on a channel, and one thread
//! runs a single [`Engine::run`] whose request source is that channel, so requests arriving while
//! others decode join the same continuous batch instead of waiting their turn.
//!
//! This is `EngineHandle`'s idea with what a server needs on top: replies on tokio channels (an
//! async handler awaits them without blocking a worker), a bounded queue (503 rather than
//! unbounded memory), counters, and a pause switch.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::{Cancel, GenRequest};
use crate::engine::{Engine, Poll, RequestSource, Update};

/// One queued request and where its updates go (`Delta`s, then one `Done` or `Failed`).
pub struct Job {
    pub request: GenRequest,
    pub updates: UnboundedSender<Update>,
}

/// Counters of the engine thread, readable while it runs.
#[derive(Debug, Default)]
struct Counters {
    submitted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    queued: AtomicUsize,
    live: AtomicUsize,
    peak_live: AtomicUsize,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// A snapshot of the engine thread's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServeStats {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    /// Jobs waiting for the engine to take them.
    pub queued: usize,
    /// Sequences live in the engine now (each engine step decodes all of them in one forward).
    pub live: usize,
    /// The most sequences live at once: above 1 means requests were batched together.
    pub peak_live: usize,
    /// Prompt tokens of the completed requests.
    pub prompt_tokens: u64,
    /// Completion tokens of the completed requests.
    pub completion_tokens: u64,
}

/// What the HTTP side holds: a way to queue jobs, pause the intake and read the counters.
#[derive(Clone)]
pub struct EngineThread {
    tx: SyncSender<Job>,
    counters: Arc<Counters>,
    paused: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    cancel: Cancel,
}

/// Why a job could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    Stopped,
}

impl EngineThread {
    /// Starts the engine thread; at most `max_queue` jobs wait at once.
    pub fn start(engine: Arc<Engine>, max_queue: usize) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(max_queue.max(1));
        let handle = Self {
            tx,
            counters: Arc::default(),
            paused: Arc::default(),
            closing: Arc::default(),
            cancel: Cancel::new(),
        };
        let counters = Arc::clone(&handle.counters);
        let paused = Arc::clone(&handle.paused);
        let closing = Arc::clone(&handle.closing);
        let cancel = handle.cancel.clone();
        let thread = std::thread::Builder::new()
            .name("distill-serve-engine".into())
            .spawn(move || {
                // Built on the thread: the reply map is shared with the engine callback there.
                let source = Intake {
                    rx,
                    replies: Rc::default(),
                    counters,
                    paused,
                    closing,
                    next_id: 0,
                    disconnected: false,
                    held: None,
                };
                run(&engine, source, &cancel)
            })?;
        Ok((handle, thread))
    }

    pub fn submit(&self, job: Job) -> std::result::Result<(), SubmitError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::Stopped);
        }
        // Counted before sending so the engine never sees the counter go below zero.
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => {
                self.counters.submitted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    pub fn stats(&self) -> ServeStats {
        let c = &self.counters;
        ServeStats {
            submitted: c.submitted.load(Ordering::SeqCst),
            completed: c.completed.load(Ordering::SeqCst),
            failed: c.failed.load(Ordering::SeqCst),
            queued: c.queued.load(Ordering::SeqCst),
            live: c.live.load(Ordering::SeqCst),
            peak_live: c.peak_live.load(Ordering::SeqCst),
            prompt_tokens: c.prompt_tokens.load(Ordering::SeqCst),
            completion_tokens: c.completion_tokens.load(Ordering::SeqCst),
        }
    }

    /// While paused, the engine takes no new job (live ones go on). Lets a caller queue several
    /// requests and release them together, e.g. to check that they batch.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Stops taking jobs and drops live ones; their handlers see their channel close.
    pub fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }
}

type Replies = Rc<RefCell<HashMap<String, UnboundedSender<Update>>>>;

fn run(engine: &Engine, mut source: Intake, cancel: &Cancel) {
    let counters = Arc::clone(&source.counters);
    let replies = Rc::clone(&source.replies);
    loop {
        let mut route = |update: Update| -> ControlFlow<()> {
            let (key, finished) = match &update {
                Update::Progress { .. } => return ControlFlow::Continue(()),
                Update::Delta { key, .. } => (key.clone(), None),
                Update::Done(output) => {
                    // Counted with the answer, so a reader who has it sees them (a step's
                    // progress update comes after its finished sequences).
                    let prompt = u64::from(output.prompt_tokens);
                    counters.prompt_tokens.fetch_add(prompt, Ordering::SeqCst);
                    let completion = u64::from(output.completion_tokens);
                    counters
                        .completion_tokens
                        .fetch_add(completion, Ordering::SeqCst);
                    (output.key.clone(), Some(&counters.completed))
                }
                Update::Failed { key, .. } => (key.clone(), Some(&counters.failed)),
            };
            let mut replies = replies.borrow_mut();
            if let Some(finished) = finished {
                // Counters first, so whoever gets the answer also sees them updated.
                if let Some(tx) = replies.remove(&key) {
                    counters.live.fetch_sub(1, Ordering::SeqCst);
                    finished.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(update);
                }
                return ControlFlow::Continue(());
            }
            if replies.get(&key).is_some_and(|tx| tx.send(update).is_ok()) {
                return ControlFlow::Continue(());
            }
            // The client hung up: the engine drops the sequence on Break.
            if replies.remove(&key).is_some() {
                counters.live.fetch_sub(1, Ordering::SeqCst);
                counters.failed.fetch_add(1, Ordering::SeqCst);
            }
            ControlFlow::Break(())
        };
        let result = engine.run(&mut source, cancel, &mut route);
        // Whatever is still live was dropped (a model failure or a shutdown): closing each
        // channel tells its handler, which answers with an error.
        let lost = replies.borrow_mut().drain().count();
        counters.live.fetch_sub(lost, Ordering::SeqCst);
        counters.failed.fetch_add(lost as u64, Ordering::SeqCst);
        if let Err(e) = &result {
            tracing::error!("generation failed: {e}");
        }
        if source.stopped() || cancel.is_cancelled() {
            break;
        }
        if result.is_err() {
            // Don't spin on a model that fails at once; queued jobs wait meanwhile.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Close whatever is still queued so no handler waits forever.
    while let Ok(job) = source.rx.try_recv() {
        counters.queued.fetch_sub(1, Ordering::SeqCst);
        drop(job);
    }
}

/// The engine's request source: the job channel.
struct Intake {
    rx: Receiver<Job>,
    replies: Replies,
    counters: Arc<Counters>,
    paused: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    next_id: u64,
    disconnected: bool,
    /// A job received just as a pause began; it goes first once the pause ends.
    held: Option<Job>,
}

/// How often an idle engine thread looks at the pause and shutdown flags.
const POLL: Duration = Duration::from_millis(20);

impl Intake {
    fn stopped(&self) -> bool {
        self.disconnected || self.closing.load(Ordering::SeqCst)
    }

    fn take(&mut self, job: Job) -> Poll {
        let Job {
            mut request,
            updates,
        } = job;
        // Keys come from here, so two clients can never collide.
        self.next_id += 1;
        request.key = format!("req-{}", self.next_id);
        self.replies
            .borrow_mut()
            .insert(request.key.clone(), updates);
        let c = &self.counters;
        c.queued.fetch_sub(1, Ordering::SeqCst);
        let now = c.live.fetch_add(1, Ordering::SeqCst) + 1;
        c.peak_live.fetch_max(now, Ordering::SeqCst);
        Poll::Ready(request)
    }
}

impl RequestSource for Intake {
    fn poll(&mut self, wait: bool) -> Poll {
        loop {
            if self.stopped() {
                return Poll::Exhausted;
            }
            if self.paused.load(Ordering::SeqCst) {
                if !wait {
                    return Poll::Pending;
                }
                std::thread::sleep(POLL);
                continue;
            }
            let received = match self.held.take() {
                Some(job) => job,
                None if !wait => {
                    // Sequences are decoding: never make them wait for a client.
                    match self.rx.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => return Poll::Pending,
                        Err(TryRecvError::Disconnected) => {
                            self.disconnected = true;
                            return Poll::Exhausted;
                        }
                    }
                }
                // Idle: block, but wake now and then to notice a pause or a shutdown.
                None => match self.rx.recv_timeout(POLL) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        self.disconnected = true;
                        return Poll::Exhausted;
                    }
                },
            };
            // A pause set while we were waiting holds this job back too.
            if self.paused.load(Ordering::SeqCst) {
                self.held = Some(received);
                continue;
            }
            return self.take(received);
        }
    }
}
