//! Corpus stage: the record schema and its parquet shards, problem sources, `<think>` parsing,
//! answer extraction and equivalence, and the curation passes (verify, filter, dedup,
//! decontaminate, split, stats, export). Builds without candle.

pub mod answer;
pub mod config;
mod error;
pub mod pass;
pub mod problems;
pub mod record;
pub mod shards;
pub mod synthetic;
pub mod think;
pub mod verify;

pub use error::{Error, Result};
