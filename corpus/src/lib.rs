//! Corpus stage: the record schema and its parquet shards, problem sources, `<think>` parsing,
//! answer extraction and equivalence, and the curation passes (verify, filter, dedup,
//! decontaminate, split, stats, export). Builds without candle.

pub mod answer;
mod error;
pub mod problems;
pub mod synthetic;
pub mod think;

pub use error::{Error, Result};
