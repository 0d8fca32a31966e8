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

/// The plural ending of a count's noun in a message: `""` for 1, `"s"` otherwise ("1 sample",
/// "2 samples").
pub(crate) fn plural(count: impl Into<u64>) -> &'static str {
    if count.into() == 1 {
        ""
    } else {
        "s"
    }
}
