//! `verify`: extracts each row's final answer from its completion and judges it against the
//! reference, filling `final_answer` and `correct`. Drops nothing (rejection happens in
//! `filter`), so a corpus can be re-verified after the verifier improves.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::answer;
use crate::pass::{par_rows, PassCounts, PassIo, SplitWriter};
use crate::record::{col, Columns};
use crate::Result;

/// Options of `verify`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyConfig {
    /// Also look for an answer in the reasoning when the completion is empty (a generation cut
    /// inside `<think>`). Off by default: R1 grades only what follows `</think>`.
    #[arg(long)]
    pub answer_from_reasoning: bool,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifySummary {
    #[serde(flatten)]
    pub counts: PassCounts,
    /// Rows judged correct.
    pub correct: u64,
    /// Rows with a reference whose answer is wrong or missing.
    pub incorrect: u64,
    /// Rows without a reference (`correct` stays null).
    pub no_reference: u64,
    /// Rows where no answer could be extracted.
    pub no_answer: u64,
}

/// Columns `verify` reads.
pub const REQUIRED: [&str; 3] = [col::COMPLETION, col::REASONING, col::REFERENCE_ANSWER];

/// Runs `verify` over `io.inputs` into `io.output`.
pub fn run(io: &PassIo, cfg: &VerifyConfig) -> Result<VerifySummary> {
    let reader = io.reader()?;
    reader.require(&REQUIRED)?;
    let out_schema = output_schema(reader.schema());
    let mut out = SplitWriter::new(io, out_schema.clone(), reader.schema())?;
    let mut tally = VerifySummary::default();
    for batch in reader.batches() {
        let batch = batch?;
        let (answers, verdicts) = verify_batch(&batch, cfg)?;
        for i in 0..batch.num_rows() {
            match verdicts.is_null(i) {
                true => tally.no_reference += 1,
                false if verdicts.value(i) => tally.correct += 1,
                false => tally.incorrect += 1,
            }
            tally.no_answer += u64::from(answers.is_null(i));
        }
        let updated = with_columns(&batch, &out_schema, answers, verdicts)?;
        out.write(&updated, &batch, &vec![None; batch.num_rows()])?;
    }
    out.finish(cfg, |counts| VerifySummary { counts, ..tally })
}

/// Extracts and judges every row of a batch: `(final_answer, correct)` arrays.
pub fn verify_batch(
    batch: &RecordBatch,
    cfg: &VerifyConfig,
) -> Result<(StringArray, BooleanArray)> {
    let c = Columns::new(batch);
    let (completion, reasoning, reference) = (
        c.str(col::COMPLETION)?,
        c.str(col::REASONING)?,
        c.str(col::REFERENCE_ANSWER)?,
    );
    let rows = par_rows(batch.num_rows(), |i| {
        let reference = (!reference.is_null(i)).then(|| reference.value(i));
        let mut text = completion.value(i);
        if cfg.answer_from_reasoning && text.trim().is_empty() {
            text = reasoning.value(i);
        }
        answer::verify(text, reference)
    });
    let answers: StringArray = rows.iter().map(|(a, _)| a.as_deref()).collect();
    let verdicts: BooleanArray = rows.iter().map(|(_, v)| *v).collect();
    Ok((answers, verdicts))
}

/// The input schema with nullable `final_answer` and `correct` (appended if absent).
fn output_schema(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    for (name, ty) in [
        (col::FINAL_ANSWER, DataType::Utf8),
        (col::CORRECT, DataType::Boolean),
    ] {
        let field = Arc::new(Field::new(name, ty, true));
        match fields.iter().position(|f| f.name() == name) {
            Some(at) => fields[at] = field,
            None => fields.push(field),
        }
    }
    Arc::new(Schema::new(fields))
}

fn with_columns(
    batch: &RecordBatch,
    schema: &SchemaRef,
    answers: StringArray,
    verdicts: BooleanArray,
) -> Result<RecordBatch> {
    let (answers, verdicts): (ArrayRef, ArrayRef) = (Arc::new(answers), Arc::new(verdicts));
    let columns = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            col::FINAL_ANSWER => Ok(answers.clone()),
            col::CORRECT => Ok(verdicts.clone()),
            name => batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| crate::Error::Invalid(format!("batch lost column `{name}`"))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
