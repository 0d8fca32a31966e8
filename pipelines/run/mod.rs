//! `distill run PIPELINE.toml`: one config file runs the whole chain, stage by stage, resumably.

pub mod exec;
pub mod manifest;
