//! The local backend: a Hugging Face checkpoint folder or a GGUF file (kept quantized) run by
//! the in-process [`Engine`].

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use distill_models::Checkpoint;

use crate::backend::{Backend, Cancel, Event, GenRequest, GenStats};
use crate::engine::{Engine, EngineOptions, IterSource, Update};
use crate::Result;

/// A local model behind the [`Backend`] trait.
pub struct LocalBackend {
    engine: Arc<Engine>,
    name: String,
}

impl LocalBackend {
    /// Opens and loads `path` (a checkpoint folder or a `.gguf` file).
    pub fn open(path: &Path, options: EngineOptions) -> Result<Self> {
        let checkpoint = Checkpoint::open(path)?;
        let engine = Engine::load(&checkpoint, options)?;
        Ok(Self::new(Arc::new(engine), model_name(path)))
    }

    /// Wraps an engine already loaded; `name` is the provenance string.
    pub fn new(engine: Arc<Engine>, name: impl Into<String>) -> Self {
        Self {
            engine,
            name: name.into(),
        }
    }

    /// The engine, to share with a server.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

/// Provenance name of a local model: its file or folder name.
pub fn model_name(path: &Path) -> String {
    let trimmed = path.components().next_back().map(|c| c.as_os_str());
    trimmed
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

impl Backend for LocalBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn generate(
        &self,
        requests: &mut (dyn Iterator<Item = GenRequest> + Send),
        cancel: &Cancel,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<GenStats> {
        let mut source = IterSource(requests);
        self.engine.run(&mut source, cancel, &mut |update| {
            match update {
                Update::Delta { .. } => {}
                Update::Done(output) => on_event(Event::Done(output)),
                Update::Failed { key, error } => on_event(Event::Failed { key, error }),
                Update::Progress { new_tokens } => on_event(Event::Progress { new_tokens }),
            }
            ControlFlow::Continue(())
        })
    }
}
