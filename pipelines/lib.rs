//! The `distill` command line: argument parsing and stage orchestration. Library crates never
//! print; everything a user sees is formatted here.

pub mod cli;
pub mod compare;
pub mod corpus_cmd;
pub mod device_args;
pub mod device_check;
pub mod interrupt;
pub mod model_arg;
pub mod model_cmd;
pub mod problems_cmd;
pub mod progress;
pub mod run;
pub mod student_cmd;
pub mod teacher_cmd;
