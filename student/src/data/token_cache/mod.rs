//! The token cache: a corpus tokenised once into files that training memory-maps, so `distill
//! train` holds neither the corpus nor its tokens in memory (an 800k-sample R1 corpus is tens of
//! GB of tokens) and a resumed or repeated run does not tokenise again.
//!
//! A cache folder `<root>/<key>/` is written once (under a temporary name, then renamed into
//! place) and never changed afterwards:
//! - `tokens.u32`: the ids of every kept document, end to end, little-endian u32;
//! - `documents.bin`: 16 bytes per document, little-endian: token offset (u64), length (u32),
//!   first trained index (u32); the training documents first, then the held-out ones;
//! - `cache.json`: [`CacheInfo`]: what the key was made of, the counts and the data report;
//! - with stored teacher distributions (logit distillation from the corpus): `teacher.bin`, 16
//!   bytes per document in `documents.bin`'s order: offset of its first target (u64), position
//!   of its first target (u32), number of targets (u32, positions consecutive); and
//!   `teacher-topk.bin`: per target, `k` ids (u32) then `k` float16 log-probabilities (u16);
//! - `fingerprint-packed.json` / `fingerprint-unpacked.json`: the training rows' fingerprint
//!   (what a resumed run checks), computed on first use.
//!
//! The key is a hash of everything the documents depend on: each corpus file's path, size and
//! modification time (how make and cargo judge freshness; hashing a 50 GB corpus would cost
//! minutes at every start), the tokenizer's JSON, the chat template, the stop ids, and the data
//! settings that change documents (`max_seq_len`, `overlong`, `keep_truncated`, the held-out
//! fraction). Packing is not part of it: rows are packed from the document lengths when a
//! dataset is opened, which takes under a second for 800k documents.
//!
//! Memory while building is one record batch of conversations and their tokens (a few tens of
//! MB) plus 16 bytes per document; while training, the document table, the packing plan (about
//! 12 bytes per document) and the rows of the current step. The mapped token pages belong to the
//! page cache: the kernel drops them under memory pressure.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::UNIX_EPOCH;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

pub use super::Sources;
use super::{DataConfig, DataReport, Renderer};
use crate::batch::{PackedRow, Rows, TeacherTargets};
use crate::checkpoint::DatasetFingerprint;
use crate::pack;
use crate::trainer::Fingerprinter;
use crate::{Error, Result};

mod build;

/// Version of the files' layout; a cache of another version is rebuilt.
const CACHE_VERSION: u32 = 1;
const TOKENS_FILE: &str = "tokens.u32";
const DOCUMENTS_FILE: &str = "documents.bin";
const INFO_FILE: &str = "cache.json";
const DOCUMENT_BYTES: usize = 16;
const TEACHER_INDEX_FILE: &str = "teacher.bin";
const TEACHER_TOPK_FILE: &str = "teacher-topk.bin";

/// What the tokens depend on; its hash names the cache folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    pub version: u32,
    pub corpus: Vec<FileStamp>,
    pub eval_corpus: Vec<FileStamp>,
    /// xxh3-128 of the tokenizer's JSON.
    pub tokenizer: String,
    /// xxh3-128 of the chat template's source.
    pub template: String,
    pub stop_ids: Vec<u32>,
    pub max_seq_len: usize,
    pub overlong: super::Overlong,
    pub keep_truncated: bool,
    /// The held-out fraction the corpus was split with (0 with a separate eval corpus).
    pub eval_fraction: f64,
    /// The teacher's stored distributions are aligned and kept beside the tokens.
    #[serde(default)]
    pub teacher_logprobs: bool,
}

/// One corpus file as the key sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub path: PathBuf,
    pub bytes: u64,
    pub modified_ns: u128,
}

impl FileStamp {
    fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            bytes: meta.len(),
            modified_ns,
        })
    }
}

impl CacheKey {
    /// The folder name: the first 16 hex digits of the key's hash.
    pub fn folder_name(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{:032x}", twox_hash::XxHash3_128::oneshot(json.as_bytes()))[..16].to_string()
    }
}

/// `cache.json`: the key, the counts and the report of the build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheInfo {
    pub key: CacheKey,
    pub train_documents: u64,
    pub eval_documents: u64,
    pub tokens: u64,
    /// The build's counts (rows, drops, truncations); row counts are filled in per dataset.
    pub report: DataReport,
    /// Alternatives per stored teacher target, and the number of targets.
    #[serde(default)]
    pub teacher_k: usize,
    #[serde(default)]
    pub teacher_targets: u64,
}

/// One document of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DocEntry {
    offset: u64,
    len: u32,
    boundary: u32,
}

/// The 16-byte little-endian record both tables (`documents.bin`, `teacher.bin`) are made of:
/// a u64 then two u32s.
fn entry_bytes(a: u64, b: u32, c: u32) -> [u8; DOCUMENT_BYTES] {
    let mut out = [0u8; DOCUMENT_BYTES];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..12].copy_from_slice(&b.to_le_bytes());
    out[12..].copy_from_slice(&c.to_le_bytes());
    out
}

/// The fields of an [`entry_bytes`] record.
fn entry_fields(b: &[u8]) -> (u64, u32, u32) {
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_le_bytes(a), u32_at(8), u32_at(12))
}

impl DocEntry {
    fn to_bytes(self) -> [u8; DOCUMENT_BYTES] {
        entry_bytes(self.offset, self.len, self.boundary)
    }

    fn from_bytes(b: &[u8]) -> Self {
        let (offset, len, boundary) = entry_fields(b);
        Self {
            offset,
            len,
            boundary,
        }
    }
}

/// Where one document's stored teacher targets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct TeacherEntry {
    /// Index of its first target in `teacher-topk.bin`.
    offset: u64,
    /// Document position of its first target (the rest follow one by one).
    first: u32,
    count: u32,
}

impl TeacherEntry {
    fn to_bytes(self) -> [u8; DOCUMENT_BYTES] {
        entry_bytes(self.offset, self.first, self.count)
    }

    fn from_bytes(b: &[u8]) -> Self {
        let (offset, first, count) = entry_fields(b);
        Self {
            offset,
            first,
            count,
        }
    }
}

/// The stored teacher targets of a cache's documents.
#[derive(Clone)]
struct TeacherTable {
    k: usize,
    /// One per document, in the documents' order.
    entries: Vec<TeacherEntry>,
    topk: Arc<Mapped>,
}

impl TeacherTable {
    /// Bytes per target: `k` ids and `k` float16 log-probabilities.
    fn target_bytes(k: usize) -> usize {
        6 * k
    }

    /// Appends document `doc`'s targets to `out`, its positions moved by `start`.
    fn push(&self, doc: usize, start: u32, out: &mut Option<TeacherTargets>) {
        let e = self.entries[doc];
        if e.count == 0 {
            return;
        }
        let out = out.get_or_insert_with(|| TeacherTargets::new(self.k));
        let size = Self::target_bytes(self.k);
        let bytes = &self.topk.bytes()[e.offset as usize * size..][..e.count as usize * size];
        for (j, target) in bytes.chunks_exact(size).enumerate() {
            out.positions.push(start + e.first + j as u32);
            let (ids, lps) = target.split_at(4 * self.k);
            out.ids.extend(
                ids.chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            out.logprobs.extend(
                lps.chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]])),
            );
        }
    }
}

/// A tokenised corpus on disk, mapped.
pub struct TokenCache {
    dir: PathBuf,
    tokens: Arc<Mapped>,
    documents: Vec<DocEntry>,
    teacher: Option<TeacherTable>,
    info: CacheInfo,
    reused: bool,
}

/// The token file, mapped (an empty file cannot be mapped, and has no tokens to read).
struct Mapped(Option<Mmap>);

impl Mapped {
    fn bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// Tokenisation progress: corpus rows done and in all.
pub type OnProgress<'a> = &'a mut dyn FnMut(u64, u64);

impl TokenCache {
    /// The cache of `sources` under `root`: opened when a complete one with the same key is
    /// there, else built (streaming the corpus one record batch at a time). A damaged cache is
    /// rebuilt.
    pub fn open_or_build(
        root: &Path,
        sources: Sources<'_>,
        renderer: &Renderer,
        config: &DataConfig,
        on_progress: OnProgress<'_>,
    ) -> Result<Self> {
        config.validate()?;
        let key = key(sources, renderer, config)?;
        let dir = root.join(key.folder_name());
        if dir.join(INFO_FILE).is_file() {
            match Self::open(&dir, &key) {
                Ok(cache) => return Ok(cache),
                Err(e) => {
                    tracing::warn!("rebuilding the token cache: {e}");
                    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                }
            }
        }
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        remove_abandoned(root, &key.folder_name());
        let partial = root.join(format!(
            "{}.partial.{}",
            key.folder_name(),
            std::process::id()
        ));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        let built = build::build(&partial, &key, sources, renderer, config, on_progress);
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        if std::fs::rename(&partial, &dir).is_err() {
            // Another run finished the same cache first: use that one.
            let _ = std::fs::remove_dir_all(&partial);
        }
        let mut cache = Self::open(&dir, &key)?;
        cache.reused = false;
        Ok(cache)
    }

    /// Opens the complete cache in `dir`, checking it against `key` and its own counts.
    fn open(dir: &Path, key: &CacheKey) -> Result<Self> {
        let damaged =
            |what: String| Error::Batch(format!("token cache `{}`: {what}", dir.display()));
        let info_path = dir.join(INFO_FILE);
        let text = std::fs::read_to_string(&info_path).map_err(|e| Error::io(&info_path, e))?;
        let info: CacheInfo = serde_json::from_str(&text)
            .map_err(|e| damaged(format!("unreadable `{INFO_FILE}` ({e})")))?;
        if &info.key != key {
            return Err(damaged("its key does not match its folder".into()));
        }
        let count = (info.train_documents + info.eval_documents) as usize;
        let documents = read_table(dir, DOCUMENTS_FILE, count, &damaged, DocEntry::from_bytes)?;
        let tokens = map_file(dir, TOKENS_FILE, info.tokens * 4, &damaged)?;
        if let Some(d) = documents
            .iter()
            .find(|d| d.len == 0 || d.offset + u64::from(d.len) > info.tokens)
        {
            return Err(damaged(format!(
                "a document ({} tokens at {}) lies outside its {} tokens",
                d.len, d.offset, info.tokens
            )));
        }
        let teacher = if key.teacher_logprobs {
            Some(open_teacher_table(dir, &info, documents.len(), &damaged)?)
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            tokens: Arc::new(tokens),
            documents,
            teacher,
            info,
            reused: true,
        })
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the cache was found complete (nothing was tokenised).
    pub fn reused(&self) -> bool {
        self.reused
    }

    pub fn info(&self) -> &CacheInfo {
        &self.info
    }

    /// The training and held-out rows, packed as `config` says, with the full data report.
    pub fn dataset(&self, config: &DataConfig) -> Result<CachedDataset> {
        let split = self.info.train_documents as usize;
        let fingerprint_file = self.dir.join(if config.packing {
            "fingerprint-packed.json"
        } else {
            "fingerprint-unpacked.json"
        });
        let teacher = |range: std::ops::Range<usize>| {
            self.teacher.as_ref().map(|t| TeacherTable {
                entries: t.entries[range].to_vec(),
                ..t.clone()
            })
        };
        let train = CachedRows::new(
            self.tokens.clone(),
            self.documents[..split].to_vec(),
            teacher(0..split),
            config,
            Some(fingerprint_file),
        )?;
        let eval = CachedRows::new(
            self.tokens.clone(),
            self.documents[split..].to_vec(),
            teacher(split..self.documents.len()),
            config,
            None,
        )?;
        let mut report = self.info.report.clone();
        report.train_documents = split;
        report.eval_documents = self.documents.len() - split;
        report.train_rows = train.count();
        report.eval_rows = eval.count();
        report.train_tokens = train.token_count;
        report.train_label_tokens = train.label_tokens;
        report.fill_ratio =
            pack::fill_ratio_of(train.token_count, train.count(), config.max_seq_len);
        Ok(CachedDataset {
            train,
            eval,
            report,
        })
    }
}

/// Training and held-out rows streamed from a [`TokenCache`].
pub struct CachedDataset {
    pub train: CachedRows,
    pub eval: CachedRows,
    pub report: DataReport,
}

/// Packed rows read from the mapped tokens on demand.
pub struct CachedRows {
    tokens: Arc<Mapped>,
    documents: Vec<DocEntry>,
    teacher: Option<TeacherTable>,
    /// Row `r` holds `documents[row_documents[row_starts[r]..row_starts[r + 1]]]`.
    row_documents: Vec<u32>,
    row_starts: Vec<usize>,
    max_len: usize,
    token_count: usize,
    label_tokens: usize,
    fingerprint: OnceLock<DatasetFingerprint>,
    fingerprint_file: Option<PathBuf>,
}

impl CachedRows {
    fn new(
        tokens: Arc<Mapped>,
        documents: Vec<DocEntry>,
        teacher: Option<TeacherTable>,
        config: &DataConfig,
        fingerprint_file: Option<PathBuf>,
    ) -> Result<Self> {
        let lengths: Vec<usize> = documents.iter().map(|d| d.len as usize).collect();
        // The same plan `pack::pack` makes for the same documents.
        let bins: Vec<Vec<usize>> = if config.packing {
            pack::best_fit_decreasing(&lengths, config.max_seq_len)?
        } else {
            (0..documents.len()).map(|i| vec![i]).collect()
        };
        let mut row_documents = Vec::with_capacity(documents.len());
        let mut row_starts = Vec::with_capacity(bins.len() + 1);
        let mut max_len = 0;
        row_starts.push(0);
        for bin in &bins {
            row_documents.extend(bin.iter().map(|&i| i as u32));
            row_starts.push(row_documents.len());
            max_len = max_len.max(bin.iter().map(|&i| lengths[i]).sum());
        }
        let label_tokens = documents
            .iter()
            .map(|d| pack::label_count(d.len as usize, d.boundary as usize))
            .sum();
        Ok(Self {
            tokens,
            row_documents,
            row_starts,
            max_len,
            token_count: lengths.iter().sum(),
            label_tokens,
            fingerprint: OnceLock::new(),
            fingerprint_file,
            documents,
            teacher,
        })
    }

    /// Tokens in all rows.
    pub fn token_count(&self) -> usize {
        self.token_count
    }

    /// The ids of `doc`, decoded from the mapped little-endian bytes.
    fn ids(&self, doc: DocEntry) -> impl Iterator<Item = u32> + '_ {
        let start = doc.offset as usize * 4;
        self.tokens.bytes()[start..start + doc.len as usize * 4]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The fingerprint from its file, else computed (one pass over the rows) and saved.
    fn load_or_compute_fingerprint(&self) -> DatasetFingerprint {
        let saved = self.fingerprint_file.as_ref().and_then(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            serde_json::from_str::<DatasetFingerprint>(&text).ok()
        });
        if let Some(f) = saved.filter(|f| f.rows == self.count() as u64) {
            return f;
        }
        let mut f = Fingerprinter::new();
        for i in 0..self.count() {
            f.add(&self.row(i));
        }
        let f = f.finish();
        if let Some(path) = &self.fingerprint_file {
            // A read-only cache folder only costs the pass again next time.
            if let Err(e) = std::fs::write(path, serde_json::to_string(&f).unwrap_or_default()) {
                tracing::debug!("cannot save `{}`: {e}", path.display());
            }
        }
        f
    }
}

impl Rows for CachedRows {
    fn count(&self) -> usize {
        self.row_starts.len() - 1
    }

    fn row(&self, index: usize) -> PackedRow {
        let docs = &self.row_documents[self.row_starts[index]..self.row_starts[index + 1]];
        let len: usize = docs
            .iter()
            .map(|&d| self.documents[d as usize].len as usize)
            .sum();
        let mut row = PackedRow {
            input_ids: Vec::with_capacity(len),
            position_ids: Vec::with_capacity(len),
            labels: Vec::with_capacity(len),
            teacher: None,
        };
        for &d in docs {
            let doc = self.documents[d as usize];
            let start = row.input_ids.len();
            if let Some(teacher) = &self.teacher {
                teacher.push(d as usize, start as u32, &mut row.teacher);
            }
            row.input_ids.extend(self.ids(doc));
            row.position_ids.extend(0..doc.len);
            pack::push_labels(
                &row.input_ids[start..],
                doc.boundary as usize,
                &mut row.labels,
            );
        }
        row
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn fingerprint(&self) -> DatasetFingerprint {
        *self
            .fingerprint
            .get_or_init(|| self.load_or_compute_fingerprint())
    }

    fn check(&self) -> Result<()> {
        // Rows are well formed by construction (checked when the cache was opened).
        if self.count() == 0 {
            return Err(Error::NoData("the training set has no rows".into()));
        }
        if self.label_tokens == 0 {
            return Err(Error::NoData("no training row has a label token".into()));
        }
        Ok(())
    }
}

/// The key of `sources` tokenised by `renderer` under `config`.
/// What documents rendered from `sources` by `renderer` under `config` depend on: the corpus
/// files (path, size, modification time), the tokenizer, the template, the stop ids and the
/// filtering settings. Also keys the TRL engine's exported dataset.
pub fn key(sources: Sources<'_>, renderer: &Renderer, config: &DataConfig) -> Result<CacheKey> {
    let stamps = |inputs: &[PathBuf]| -> Result<Vec<FileStamp>> {
        distill_corpus::shards::ShardReader::open(inputs)?
            .files()
            .iter()
            .map(|f| FileStamp::of(f))
            .collect()
    };
    let hash = |text: &str| format!("{:032x}", twox_hash::XxHash3_128::oneshot(text.as_bytes()));
    let tokenizer_json = renderer
        .tokenizer()
        .inner
        .to_string(false)
        .map_err(|e| Error::Config(format!("cannot serialise the tokenizer: {e}")))?;
    Ok(CacheKey {
        version: CACHE_VERSION,
        corpus: stamps(sources.corpus)?,
        eval_corpus: match sources.eval_corpus {
            Some(inputs) => stamps(inputs)?,
            None => Vec::new(),
        },
        tokenizer: hash(&tokenizer_json),
        template: hash(renderer.template().source()),
        stop_ids: renderer.stop_ids().to_vec(),
        max_seq_len: config.max_seq_len,
        overlong: config.overlong,
        keep_truncated: config.keep_truncated,
        eval_fraction: sources.eval_fraction(config),
        teacher_logprobs: config.teacher_logprobs,
    })
}

/// The stored teacher targets of a complete cache, checked against its counts.
fn open_teacher_table(
    dir: &Path,
    info: &CacheInfo,
    documents: usize,
    damaged: &dyn Fn(String) -> Error,
) -> Result<TeacherTable> {
    let entries = read_table(
        dir,
        TEACHER_INDEX_FILE,
        documents,
        damaged,
        TeacherEntry::from_bytes,
    )?;
    if let Some(e) = entries
        .iter()
        .find(|e| e.offset + u64::from(e.count) > info.teacher_targets)
    {
        return Err(damaged(format!(
            "a document's teacher targets ({} at {}) lie outside its {} targets",
            e.count, e.offset, info.teacher_targets
        )));
    }
    let expected = info.teacher_targets * TeacherTable::target_bytes(info.teacher_k) as u64;
    Ok(TeacherTable {
        k: info.teacher_k,
        entries,
        topk: Arc::new(map_file(dir, TEACHER_TOPK_FILE, expected, damaged)?),
    })
}

/// The `count` 16-byte records of table `name` in `dir`, decoded.
fn read_table<T>(
    dir: &Path,
    name: &str,
    count: usize,
    damaged: &dyn Fn(String) -> Error,
    decode: fn(&[u8]) -> T,
) -> Result<Vec<T>> {
    let path = dir.join(name);
    let raw = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if raw.len() != count * DOCUMENT_BYTES {
        return Err(damaged(format!(
            "`{name}` has {} bytes, expected {}",
            raw.len(),
            count * DOCUMENT_BYTES
        )));
    }
    Ok(raw.chunks_exact(DOCUMENT_BYTES).map(decode).collect())
}

/// File `name` of `dir`, checked to hold `expected` bytes and mapped.
fn map_file(
    dir: &Path,
    name: &str,
    expected: u64,
    damaged: &dyn Fn(String) -> Error,
) -> Result<Mapped> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let bytes = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    if bytes != expected {
        return Err(damaged(format!(
            "`{name}` has {bytes} bytes, expected {expected}"
        )));
    }
    if bytes == 0 {
        return Ok(Mapped(None));
    }
    // SAFETY: the cache is written once under a temporary name and renamed into place;
    // nothing writes to its files afterwards, so the mapped bytes do not change.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
    Ok(Mapped(Some(map)))
}

/// Removes partial builds of `folder` left by runs that no longer exist (killed mid-build).
fn remove_abandoned(root: &Path, folder: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let prefix = format!("{folder}.partial.");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid).exists();
        if !alive && Path::new("/proc/self").exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
