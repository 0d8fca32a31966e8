//! The teacher's log-probabilities stored beside its samples, so one generation pass feeds
//! supervised fine-tuning, logit distillation (the student learns the teacher's top-k
//! distribution at every generated token) and evaluation.
//!
//! `distill generate --logprobs K` adds four columns to the corpus (absent otherwise; every
//! curation pass carries them through, since passes keep the input's schema):
//!
//! | column | type | per row |
//! | --- | --- | --- |
//! | `teacher_token_ids` | list<uint32> | the `n` tokens the teacher generated after the prefill, its end-of-turn token included when it ended the turn |
//! | `teacher_token_logprobs` | list<float16> | `n` log-probabilities of those tokens |
//! | `teacher_top_ids` | list<uint32> | `n × K` ids: the teacher's `K` most likely tokens at each step, most likely first |
//! | `teacher_top_logprobs` | list<float16> | `n × K` log-probabilities of those ids |
//!
//! Log-probabilities are the model's own (`log_softmax` of its logits at temperature 1, before
//! any sampling filter), as vLLM and OpenAI endpoints return them; the columns store float16
//! (3 significant digits, finer than the sampling noise of a distribution, at half the bytes),
//! while a record in memory keeps float32, so `distill serve` answers with the model's own
//! values as vLLM does. A row whose sample has no log-probabilities (an endpoint that returned
//! none) holds nulls.

use std::sync::Arc;

use arrow_array::builder::{Float16Builder, ListBuilder, UInt32Builder};
use arrow_array::{Array, ArrayRef, Float16Array, ListArray, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use half::f16;

use crate::{Error, Result};

/// Column names, written once.
pub mod col {
    pub const TOKEN_IDS: &str = "teacher_token_ids";
    pub const TOKEN_LOGPROBS: &str = "teacher_token_logprobs";
    pub const TOP_IDS: &str = "teacher_top_ids";
    pub const TOP_LOGPROBS: &str = "teacher_top_logprobs";
}

/// One sample's per-token log-probabilities: for each generated token, its id, its
/// log-probability and the `k` most likely ids with theirs (float32; rounded to float16 when
/// written, see [`TokenLogprobs::as_stored`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenLogprobs {
    k: usize,
    token_ids: Vec<u32>,
    token_logprobs: Vec<f32>,
    top_ids: Vec<u32>,
    top_logprobs: Vec<f32>,
}

impl TokenLogprobs {
    /// Empty, for `k` alternatives per token.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            ..Self::default()
        }
    }

    /// Appends one generated token: its id and log-probability, and the step's `k` most likely
    /// `(id, log-probability)` pairs, most likely first (fewer when the vocabulary is smaller).
    pub fn push(&mut self, token: u32, logprob: f32, top: &[(u32, f32)]) -> Result<()> {
        if top.len() != self.k {
            return Err(Error::Invalid(format!(
                "a token has {} alternatives where {} were asked",
                top.len(),
                self.k
            )));
        }
        self.token_ids.push(token);
        self.token_logprobs.push(logprob);
        for &(id, lp) in top {
            self.top_ids.push(id);
            self.top_logprobs.push(lp);
        }
        Ok(())
    }

    /// This record as the corpus stores it and reads it back (every value rounded to float16).
    pub fn as_stored(&self) -> Self {
        let round = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        Self {
            k: self.k,
            token_ids: self.token_ids.clone(),
            token_logprobs: round(&self.token_logprobs),
            top_ids: self.top_ids.clone(),
            top_logprobs: round(&self.top_logprobs),
        }
    }

    /// Alternatives per token.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Generated tokens.
    pub fn len(&self) -> usize {
        self.token_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.token_ids.is_empty()
    }

    pub fn token_ids(&self) -> &[u32] {
        &self.token_ids
    }

    /// The generated tokens' log-probabilities.
    pub fn token_logprobs(&self) -> impl Iterator<Item = f32> + '_ {
        self.token_logprobs.iter().copied()
    }

    /// The `k` most likely ids at step `i` and their log-probabilities.
    pub fn top(&self, i: usize) -> (&[u32], impl Iterator<Item = f32> + '_) {
        let range = i * self.k..(i + 1) * self.k;
        (
            &self.top_ids[range.clone()],
            self.top_logprobs[range].iter().copied(),
        )
    }

    /// The tokens from `start` on, as their own record (a streamed chunk's share).
    pub fn tail(&self, start: usize) -> Self {
        let start = start.min(self.len());
        Self {
            k: self.k,
            token_ids: self.token_ids[start..].to_vec(),
            token_logprobs: self.token_logprobs[start..].to_vec(),
            top_ids: self.top_ids[start * self.k..].to_vec(),
            top_logprobs: self.top_logprobs[start * self.k..].to_vec(),
        }
    }

    /// Keeps the first `n` tokens.
    pub fn truncate(&mut self, n: usize) {
        self.token_ids.truncate(n);
        self.token_logprobs.truncate(n);
        self.top_ids.truncate(n * self.k);
        self.top_logprobs.truncate(n * self.k);
    }

    /// Bytes the four columns hold for this sample before compression.
    pub fn raw_bytes(&self) -> usize {
        self.token_ids.len() * 6 + self.top_ids.len() * 6
    }
}

/// The four columns' fields, all nullable.
pub fn fields() -> Vec<Field> {
    let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
    vec![
        Field::new(col::TOKEN_IDS, list(DataType::UInt32), true),
        Field::new(col::TOKEN_LOGPROBS, list(DataType::Float16), true),
        Field::new(col::TOP_IDS, list(DataType::UInt32), true),
        Field::new(col::TOP_LOGPROBS, list(DataType::Float16), true),
    ]
}

/// `base` with the four columns appended.
pub fn with_logprobs(base: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(fields_not_in(base));
    Arc::new(Schema::new(fields))
}

fn fields_not_in(base: &Schema) -> Vec<Field> {
    fields()
        .into_iter()
        .filter(|f| base.field_with_name(f.name()).is_err())
        .collect()
}

/// Whether a corpus schema carries the teacher's log-probabilities.
pub fn present(schema: &Schema) -> bool {
    fields()
        .iter()
        .all(|f| schema.field_with_name(f.name()).is_ok())
}

/// The four columns for `rows` (one entry per row; `None` writes nulls).
pub fn to_arrays(rows: &[Option<&TokenLogprobs>]) -> Vec<ArrayRef> {
    let mut ids = ListBuilder::new(UInt32Builder::new());
    let mut lps = ListBuilder::new(Float16Builder::new());
    let mut top_ids = ListBuilder::new(UInt32Builder::new());
    let mut top_lps = ListBuilder::new(Float16Builder::new());
    let halves = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
    for row in rows {
        match row {
            Some(t) => {
                ids.values().append_slice(&t.token_ids);
                lps.values().append_slice(&halves(&t.token_logprobs));
                top_ids.values().append_slice(&t.top_ids);
                top_lps.values().append_slice(&halves(&t.top_logprobs));
                ids.append(true);
                lps.append(true);
                top_ids.append(true);
                top_lps.append(true);
            }
            None => {
                ids.append(false);
                lps.append(false);
                top_ids.append(false);
                top_lps.append(false);
            }
        }
    }
    vec![
        Arc::new(ids.finish()),
        Arc::new(lps.finish()),
        Arc::new(top_ids.finish()),
        Arc::new(top_lps.finish()),
    ]
}

/// `batch` with the four columns appended for its rows.
pub fn append(batch: &RecordBatch, rows: &[Option<&TokenLogprobs>]) -> Result<RecordBatch> {
    if rows.len() != batch.num_rows() {
        return Err(Error::Invalid(format!(
            "{} rows of log-probabilities for a batch of {} rows",
            rows.len(),
            batch.num_rows()
        )));
    }
    let schema = with_logprobs(&batch.schema());
    let mut columns = batch.columns().to_vec();
    columns.extend(to_arrays(rows));
    RecordBatch::try_new(schema, columns)
        .map_err(|e| Error::Invalid(format!("cannot add the log-probability columns: {e}")))
}

/// The stored log-probabilities of every row of `batch` (`None` for a null row); an error
/// names a column that is missing, mistyped, or whose lengths do not agree.
pub fn read(batch: &RecordBatch) -> Result<Vec<Option<TokenLogprobs>>> {
    let list = |name: &str| -> Result<&ListArray> {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Invalid(format!("the corpus has no column `{name}`")))?
            .as_any()
            .downcast_ref::<ListArray>()
            .ok_or_else(|| Error::Invalid(format!("column `{name}` is not a list")))
    };
    let (ids, lps, top_ids, top_lps) = (
        list(col::TOKEN_IDS)?,
        list(col::TOKEN_LOGPROBS)?,
        list(col::TOP_IDS)?,
        list(col::TOP_LOGPROBS)?,
    );
    let u32s = |l: &ListArray, row: usize, name: &str| -> Result<Vec<u32>> {
        let v = l.value(row);
        let a = v.as_any().downcast_ref::<UInt32Array>().ok_or_else(|| {
            Error::Invalid(format!(
                "column `{name}` holds {}, not uint32",
                v.data_type()
            ))
        })?;
        Ok(a.values().to_vec())
    };
    let f16s = |l: &ListArray, row: usize, name: &str| -> Result<Vec<f32>> {
        let v = l.value(row);
        let a = v.as_any().downcast_ref::<Float16Array>().ok_or_else(|| {
            Error::Invalid(format!(
                "column `{name}` holds {}, not float16",
                v.data_type()
            ))
        })?;
        Ok(a.values().iter().map(|x| x.to_f32()).collect())
    };
    (0..batch.num_rows())
        .map(|row| {
            if ids.is_null(row) || top_ids.is_null(row) {
                return Ok(None);
            }
            let t = TokenLogprobs {
                k: 0,
                token_ids: u32s(ids, row, col::TOKEN_IDS)?,
                token_logprobs: f16s(lps, row, col::TOKEN_LOGPROBS)?,
                top_ids: u32s(top_ids, row, col::TOP_IDS)?,
                top_logprobs: f16s(top_lps, row, col::TOP_LOGPROBS)?,
            };
            let n = t.token_ids.len();
            let k = t.top_ids.len().checked_div(n).unwrap_or(0);
            if t.token_logprobs.len() != n
                || t.top_ids.len() != n * k
                || t.top_logprobs.len() != n * k
            {
                return Err(Error::Invalid(format!(
                    "row {row}: the log-probability columns disagree ({n} tokens, {} log-probabilities, {} top ids, {} top log-probabilities)",
                    t.token_logprobs.len(),
                    t.top_ids.len(),
                    t.top_logprobs.len()
                )));
            }
            Ok(Some(TokenLogprobs { k, ..t }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{self, Record};
    use crate::shards::{ShardReader, ShardWriter, WriterOptions};

    fn sample(k: usize, n: usize, seed: u32) -> TokenLogprobs {
        let mut t = TokenLogprobs::new(k);
        for i in 0..n as u32 {
            let top: Vec<(u32, f32)> = (0..k as u32)
                .map(|j| {
                    (
                        seed * 1000 + i * 7 + j,
                        -0.013 * (j as f32 + 1.0) * (i + 1) as f32,
                    )
                })
                .collect();
            t.push(top[0].0, top[0].1, &top).unwrap();
        }
        t
    }

    /// Written into parquet shards and read back, every id and float16 value is identical,
    /// null rows stay null, and the other corpus columns are untouched.
    #[test]
    fn stored_logprobs_round_trip_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Record> = (0..3)
            .map(|i| Record::sample(&format!("p{i}"), 0, "q", "r", "c"))
            .collect();
        let rows = [Some(sample(5, 40, 1)), None, Some(sample(5, 0, 3))];
        let batch = record::records_to_batch(&records).unwrap();
        let refs: Vec<Option<&TokenLogprobs>> = rows.iter().map(Option::as_ref).collect();
        let batch = append(&batch, &refs).unwrap();
        let schema = with_logprobs(&record::schema());
        assert_eq!(batch.schema(), schema);
        let mut w = ShardWriter::create(dir.path(), schema, WriterOptions::default()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let reader = ShardReader::open(&[dir.path().to_path_buf()]).unwrap();
        assert!(present(reader.schema()));
        let read_back: Vec<Option<TokenLogprobs>> = reader
            .batches()
            .flat_map(|b| read(&b.unwrap()).unwrap())
            .collect();
        assert_eq!(read_back[0], rows[0].as_ref().map(TokenLogprobs::as_stored));
        assert_ne!(
            read_back[0], rows[0],
            "the sample's values are not all float16 values"
        );
        assert_eq!(read_back[1], None);
        assert_eq!(read_back[2].as_ref().unwrap().len(), 0);
        let t = read_back[0].as_ref().unwrap();
        assert_eq!(t.k(), 5);
        let (ids, lps) = t.top(2);
        assert_eq!(ids, &[1014, 1015, 1016, 1017, 1018]);
        let lps: Vec<f32> = lps.collect();
        assert_eq!(lps[0], f16::from_f32(-0.039).to_f32());
        let records_back: Vec<Record> = reader
            .batches()
            .flat_map(|b| record::records_from_batch(&b.unwrap()).unwrap())
            .collect();
        assert_eq!(records_back, records);
    }

    /// A record's head (`truncate`) and tail are its two parts, token for token.
    #[test]
    fn head_and_tail_split_a_record() {
        let whole = sample(3, 10, 2);
        let mut head = whole.clone();
        head.truncate(4);
        let tail = whole.tail(4);
        assert_eq!((head.len(), tail.len(), tail.k()), (4, 6, 3));
        assert_eq!(tail.token_ids(), &whole.token_ids()[4..]);
        for i in 0..6 {
            assert_eq!(tail.top(i).0, whole.top(i + 4).0);
            assert!(tail.top(i).1.eq(whole.top(i + 4).1));
        }
        assert!(tail.token_logprobs().eq(whole.token_logprobs().skip(4)));
        assert!(whole.tail(10).is_empty() && whole.tail(99).is_empty());
    }

    #[test]
    fn a_token_with_the_wrong_number_of_alternatives_is_refused() {
        let mut t = TokenLogprobs::new(3);
        assert!(t.push(1, -0.1, &[(1, -0.1)]).is_err());
        assert!(t.is_empty());
    }
}
