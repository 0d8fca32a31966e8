//! Writing a token cache: a corpus walked one record batch at a time, each document's ids
//! appended to `tokens.u32` and listed in `documents.bin` (with the stored teacher targets in
//! `teacher.bin` / `teacher-topk.bin`), then `cache.json`; the folder layout is the parent
//! module's.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::super::{no_rows_reason, walk, Conversation, DocumentSink, Prepared};
use super::{
    CacheInfo, CacheKey, DataConfig, DocEntry, OnProgress, Renderer, Sources, TeacherEntry,
    DOCUMENTS_FILE, INFO_FILE, TEACHER_INDEX_FILE, TEACHER_TOPK_FILE, TOKENS_FILE,
};
use crate::batch::TeacherTargets;
use crate::{Error, Result};

/// The token cache's side of a [`walk`]: ids appended to `tokens.u32`, documents listed.
struct CacheWriter<'a> {
    tokens: BufWriter<File>,
    tokens_path: &'a Path,
    offset: u64,
    /// The documents of each side with their teacher entries (default without a teacher).
    train: Vec<(DocEntry, TeacherEntry)>,
    eval: Vec<(DocEntry, TeacherEntry)>,
    teacher: Option<TeacherWriter>,
    on_progress: OnProgress<'a>,
}

/// The stored teacher targets' side of a cache build.
struct TeacherWriter {
    topk: BufWriter<File>,
    path: PathBuf,
    k: Option<usize>,
    offset: u64,
}

impl TeacherWriter {
    /// Appends a document's targets to `teacher-topk.bin` and returns its index entry.
    fn document(&mut self, targets: Option<&TeacherTargets>) -> Result<TeacherEntry> {
        let mut entry = TeacherEntry {
            offset: self.offset,
            ..TeacherEntry::default()
        };
        if let Some(t) = targets.filter(|t| !t.is_empty()) {
            let k = *self.k.get_or_insert(t.k);
            if t.k != k {
                return Err(Error::Batch(format!(
                    "the corpus stores {k} teacher alternatives per token in some rows and {} in others",
                    t.k
                )));
            }
            let io = |e| Error::io(&self.path, e);
            for j in 0..t.len() {
                for id in &t.ids[j * k..(j + 1) * k] {
                    self.topk.write_all(&id.to_le_bytes()).map_err(io)?;
                }
                for lp in &t.logprobs[j * k..(j + 1) * k] {
                    self.topk.write_all(&lp.to_le_bytes()).map_err(io)?;
                }
            }
            entry.first = t.positions[0];
            entry.count = t.len() as u32;
            self.offset += t.len() as u64;
        }
        Ok(entry)
    }
}

impl DocumentSink for CacheWriter<'_> {
    fn document(&mut self, _: &Conversation, doc: Prepared, held_out: bool) -> Result<()> {
        let teacher = match &mut self.teacher {
            Some(writer) => writer.document(doc.teacher.as_ref())?,
            None => TeacherEntry::default(),
        };
        for id in &doc.input_ids {
            self.tokens
                .write_all(&id.to_le_bytes())
                .map_err(|e| Error::io(self.tokens_path, e))?;
        }
        let entry = DocEntry {
            offset: self.offset,
            len: doc.input_ids.len() as u32,
            boundary: doc.boundary as u32,
        };
        self.offset += doc.input_ids.len() as u64;
        if held_out {
            self.eval.push((entry, teacher));
        } else {
            self.train.push((entry, teacher));
        }
        Ok(())
    }

    fn batch_done(&mut self, rows: u64, total: u64) -> Result<()> {
        (self.on_progress)(rows, total);
        Ok(())
    }
}

/// Tokenises `sources` into `dir`, one record batch at a time.
pub(super) fn build(
    dir: &Path,
    key: &CacheKey,
    sources: Sources<'_>,
    renderer: &Renderer,
    config: &DataConfig,
    on_progress: OnProgress<'_>,
) -> Result<()> {
    let tokens_path = dir.join(TOKENS_FILE);
    let file = File::create(&tokens_path).map_err(|e| Error::io(&tokens_path, e))?;
    let mut writer = CacheWriter {
        tokens: BufWriter::with_capacity(1 << 20, file),
        tokens_path: &tokens_path,
        offset: 0,
        train: Vec::new(),
        eval: Vec::new(),
        teacher: if config.teacher_logprobs {
            let path = dir.join(TEACHER_TOPK_FILE);
            let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
            Some(TeacherWriter {
                topk: BufWriter::with_capacity(1 << 20, file),
                path,
                k: None,
                offset: 0,
            })
        } else {
            None
        },
        on_progress,
    };
    let walked = walk(sources, renderer, config, &mut writer)?;
    let CacheWriter {
        tokens,
        offset,
        mut train,
        mut eval,
        teacher,
        ..
    } = writer;
    if sources.eval_corpus.is_some() && eval.is_empty() {
        return Err(Error::NoData(format!(
            "the eval corpus is unusable: {}",
            no_rows_reason(&walked.eval_report, config)
        )));
    }
    if train.is_empty() && sources.eval_corpus.is_none() && !eval.is_empty() {
        // A tiny corpus whose every row hashed into the held-out set still trains.
        std::mem::swap(&mut train, &mut eval);
    }
    if train.is_empty() {
        return Err(Error::NoData(no_rows_reason(&walked.report, config)));
    }
    let (mut teacher_k, mut teacher_targets) = (0, 0);
    if let Some(t) = teacher {
        finish_file(t.topk, &t.path)?;
        let index_path = dir.join(TEACHER_INDEX_FILE);
        let bytes: Vec<u8> = train
            .iter()
            .chain(&eval)
            .flat_map(|(_, e)| e.to_bytes())
            .collect();
        std::fs::write(&index_path, bytes).map_err(|e| Error::io(&index_path, e))?;
        teacher_k = t.k.unwrap_or(0);
        teacher_targets = t.offset;
    }
    finish_file(tokens, &tokens_path)?;
    let docs_path = dir.join(DOCUMENTS_FILE);
    let bytes: Vec<u8> = train
        .iter()
        .chain(&eval)
        .flat_map(|(d, _)| d.to_bytes())
        .collect();
    std::fs::write(&docs_path, bytes).map_err(|e| Error::io(&docs_path, e))?;
    let info = CacheInfo {
        key: key.clone(),
        train_documents: train.len() as u64,
        eval_documents: eval.len() as u64,
        tokens: offset,
        report: walked.report,
        teacher_k,
        teacher_targets,
    };
    let info_path = dir.join(INFO_FILE);
    let json = serde_json::to_string_pretty(&info)
        .map_err(|e| Error::Config(format!("cannot serialise the token cache info: {e}")))?;
    std::fs::write(&info_path, json + "\n").map_err(|e| Error::io(&info_path, e))
}

/// Flushes and syncs a file the build wrote through `writer`.
fn finish_file(writer: BufWriter<File>, path: &Path) -> Result<()> {
    writer
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io(path, e))
}
