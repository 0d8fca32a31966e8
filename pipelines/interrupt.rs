//! One process-wide Ctrl-C handler. The `ctrlc` crate allows a single handler per process and
//! `distill run` runs several stages in one process, so each stage registers here what its first
//! Ctrl-C should do (finish the shard, checkpoint the step); a second Ctrl-C exits at once. The
//! pipeline runner asks [`requested`] after each stage, so an interrupted stage is never taken
//! for a finished one.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

type Action = Box<dyn Fn() + Send + 'static>;

static ACTION: Mutex<Option<Action>> = Mutex::new(None);
static PRESSED: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
/// A child process group the second Ctrl-C ends before exiting (0: none).
static CHILD_GROUP: AtomicU32 = AtomicU32::new(0);

/// Names the process group (its leader's id) of a child that runs in a group of its own (the
/// TRL engine's `accelerate launch`), so that the second Ctrl-C, which exits at once, does not
/// leave it running; 0 forgets it.
pub fn set_child_group(leader: u32) {
    CHILD_GROUP.store(leader, Ordering::SeqCst);
}

/// Makes `action` what the first Ctrl-C does, replacing the previous stage's action.
pub fn on_interrupt(action: impl Fn() + Send + 'static) {
    if let Ok(mut slot) = ACTION.lock() {
        *slot = Some(Box::new(action));
    }
    let installed = INSTALLED.get_or_init(|| {
        ctrlc::set_handler(|| {
            if PRESSED.swap(true, Ordering::SeqCst) {
                let group = CHILD_GROUP.load(Ordering::SeqCst);
                #[cfg(unix)]
                if let Ok(group) = i32::try_from(group) {
                    if group > 0 {
                        // SAFETY: kill(2) with a negative id signals that process group; it
                        // touches no memory of this process.
                        unsafe {
                            libc::kill(-group, libc::SIGTERM);
                        }
                    }
                }
                std::process::exit(130);
            }
            if let Ok(slot) = ACTION.lock() {
                if let Some(action) = slot.as_ref() {
                    action();
                }
            }
        })
        .map_err(|e| e.to_string())
    });
    if let Err(e) = installed {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
}

/// Whether Ctrl-C has been pressed in this process.
pub fn requested() -> bool {
    PRESSED.load(Ordering::SeqCst)
}
