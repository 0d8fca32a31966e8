//! Corpus stage: record schema, parquet shards, problem sources, answer verification and curation.
