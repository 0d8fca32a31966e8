//! Corpus stage: the record schema and its parquet shards, problem sources, `<think>` parsing,
//! answer extraction and equivalence, and the curation passes (verify, filter, dedup,
//! decontaminate, split, stats, export) and the import of other tools' corpora. Builds without candle.

pub mod answer;
pub mod chart;
pub mod config;
pub mod decontaminate;
pub mod dedup;
mod error;
pub mod export;
pub mod filter;
pub mod import;
pub mod logprobs;
pub mod pass;
pub mod problems;
pub mod record;
pub mod shards;
pub mod split;
pub mod stats;
pub mod synthetic;
pub mod text;
pub mod think;
pub mod verify;

pub use error::{Error, Result};
