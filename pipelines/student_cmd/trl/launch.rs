//! Runs the written job: `bash launch.sh` (so what runs is what a user would run by hand) in
//! its own process group, followed line by line. `distill-metrics {json}` lines from
//! `distill_sft.py` become the progress bar and `metrics.jsonl` (the keys a distill run writes:
//! `loss`, `lr`, `grad_norm`, `tokens`, `tokens_per_sec`, `seconds`; `eval_loss` lines); every
//! line of TRL's output also goes to `trl.log` and, unless quiet, to stderr.
//!
//! The first Ctrl-C writes the stop file `distill_sft.py` looks for after every step: all
//! processes agree on it, save a checkpoint and stop, and `--resume` continues from there. A
//! second Ctrl-C ends the job's process group at once.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};

use super::job::LAUNCH;
use super::python::PYTHON_ENV;
use crate::progress::Progress;

/// Prefix of the metric lines `distill_sft.py` prints.
pub const METRICS_PREFIX: &str = "distill-metrics ";
/// The line `distill_sft.py` prints when it stopped on the stop file.
pub const STOPPED_LINE: &str = "distill-stopped";
/// The file whose existence asks the job to checkpoint and stop.
pub const STOP_FILE: &str = "distill-stop";
pub const LOG_FILE: &str = "trl.log";

/// How the job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Stopped by Ctrl-C after a checkpoint (resumable).
    pub stopped: bool,
    /// The last optimizer step logged.
    pub steps: u64,
    pub last_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    /// (step, loss) and (step, eval loss) for the loss chart.
    pub curve: Vec<(u64, f64)>,
    pub evals: Vec<(u64, f64)>,
}

/// Turns `distill-metrics` records into `metrics.jsonl` lines and the progress display.
#[derive(Debug, Default)]
pub struct Follower {
    last: Option<(f64, f64)>,
    pub max_steps: Option<u64>,
    pub steps: u64,
    pub last_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub curve: Vec<(u64, f64)>,
    pub evals: Vec<(u64, f64)>,
}

/// What one metric record means for distill.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A training step: its `metrics.jsonl` line and the bar's message.
    Step { line: Value, message: String },
    /// A held-out loss.
    Eval { line: Value, step: u64, loss: f64 },
    /// Anything else TRL logs (the run summary).
    Other,
}

impl Follower {
    /// Reads one `distill-metrics` record; `now` is seconds since the job started.
    pub fn record(&mut self, record: &Value, now: f64) -> Record {
        let step = record["step"].as_u64().unwrap_or(0);
        if let Some(max) = record["max_steps"].as_u64().filter(|&m| m > 0) {
            self.max_steps = Some(max);
        }
        if let Some(loss) = record["eval_loss"].as_f64() {
            self.eval_loss = Some(loss);
            self.evals.push((step, loss));
            return Record::Eval {
                line: json!({"step": step, "eval_loss": loss}),
                step,
                loss,
            };
        }
        let (Some(loss), Some(lr)) = (record["loss"].as_f64(), record["learning_rate"].as_f64())
        else {
            return Record::Other;
        };
        self.steps = step;
        self.last_loss = Some(loss);
        self.curve.push((step, loss));
        // TRL counts the tokens of all processes, cumulatively.
        let total_tokens = record["num_tokens"].as_f64().unwrap_or(0.0);
        let (tokens, rate) = match self.last {
            Some((t0, n0)) if now > t0 => (total_tokens - n0, (total_tokens - n0) / (now - t0)),
            _ => (
                total_tokens,
                if now > 0.0 { total_tokens / now } else { 0.0 },
            ),
        };
        self.last = Some((now, total_tokens));
        let line = json!({
            "step": step, "loss": loss, "lr": lr, "grad_norm": record["grad_norm"],
            "tokens": tokens as u64, "tokens_per_sec": rate, "seconds": now,
            "epoch": record["epoch"], "engine": "trl",
        });
        Record::Step {
            line,
            message: format!("loss {loss:.4}  lr {lr:.2e}  {rate:.0} tok/s"),
        }
    }
}

/// Runs `launch.sh` in `out` with `python`, following it; `metrics` is the `metrics.jsonl` to
/// append to.
pub fn run(out: &Path, python: &Path, metrics: &Path, progress: bool) -> anyhow::Result<Outcome> {
    let stop_file = out.join(STOP_FILE);
    let _ = std::fs::remove_file(&stop_file);
    let log_path = out.join(LOG_FILE);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open `{}`", log_path.display()))?;
    let mut metrics_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(metrics)
        .with_context(|| format!("cannot open `{}`", metrics.display()))?;

    let mut command = Command::new("bash");
    if std::env::var_os("MAIN_PROCESS_PORT").is_none() {
        // A free rendezvous port, so two jobs on one machine never meet on accelerate's 29500.
        if let Some(port) = std::net::TcpListener::bind(("127.0.0.1", 0))
            .ok()
            .and_then(|l| l.local_addr().ok())
        {
            command.env("MAIN_PROCESS_PORT", port.port().to_string());
        }
    }
    command
        .arg(LAUNCH)
        .current_dir(out)
        .env(PYTHON_ENV, python)
        // Lines as they are printed, not when a pipe buffer fills.
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        // Its own process group: a terminal's Ctrl-C reaches distill only, which asks the job
        // to checkpoint and stop instead of killing it mid-step.
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run `bash {}`", out.join(LAUNCH).display()))?;
    crate::interrupt::set_child_group(child.id());
    let flag = stop_file.clone();
    crate::interrupt::on_interrupt(move || {
        let _ = File::create(&flag);
        eprintln!(
            "\nInterrupted: TRL checkpoints after this step and stops (Ctrl-C again to quit now)"
        );
    });

    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                // tqdm redraws with `\r`: the last state of the line is what it says.
                let text = String::from_utf8_lossy(&line);
                let last = text.rsplit('\r').find(|s| !s.trim().is_empty());
                if tx.send(last.unwrap_or("").to_string()).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);

    let bar = Progress::new(
        0,
        "{spinner} trl [{bar:30}] {pos}/{len} steps  {msg}  elapsed {elapsed}  ETA {eta}",
        "steps",
        progress,
    );
    bar.set_prefix("trl");
    let started = Instant::now();
    let mut follower = Follower::default();
    let mut stopped = false;
    let mut last_output = String::new();
    let mut failure: Option<anyhow::Error> = None;
    for line in rx {
        let _ = writeln!(log, "{line}");
        if let Some(record) = line.strip_prefix(METRICS_PREFIX) {
            let Ok(record) = serde_json::from_str::<Value>(record) else {
                continue;
            };
            let entry = match follower.record(&record, started.elapsed().as_secs_f64()) {
                Record::Step { line, message } => {
                    if let Some(max) = follower.max_steps {
                        bar.set_length(max);
                    }
                    bar.set_position(follower.steps);
                    bar.set_message(message);
                    Some(line)
                }
                Record::Eval { line, step, loss } => {
                    bar.println(format!("step {step}: held-out loss {loss:.4}"));
                    Some(line)
                }
                Record::Other => None,
            };
            if let Some(entry) = entry {
                if let Err(e) = writeln!(metrics_file, "{entry}") {
                    failure.get_or_insert(
                        anyhow::anyhow!(e).context(format!("cannot write `{}`", metrics.display())),
                    );
                }
            }
            continue;
        }
        if line.trim() == STOPPED_LINE {
            stopped = true;
            continue;
        }
        // The trainer's own copy of each log (a Python dict) says nothing the bar does not.
        if line.starts_with("{'") {
            continue;
        }
        if !line.trim().is_empty() {
            last_output = line.trim().to_string();
        }
        if progress {
            bar.println(&line);
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().context("cannot wait for the TRL job")?;
    crate::interrupt::set_child_group(0);
    bar.finish_and_clear();
    let _ = std::fs::remove_file(&stop_file);
    if let Some(e) = failure {
        return Err(e);
    }
    if !status.success() {
        let code = status.code().map_or("killed by a signal".to_string(), |c| {
            format!("exit status {c}")
        });
        anyhow::bail!(
            "TRL failed ({code}): {}; its output is in `{}`",
            if last_output.is_empty() {
                "no output"
            } else {
                &last_output
            },
            log_path.display()
        );
    }
    Ok(Outcome {
        stopped,
        steps: follower.steps,
        last_loss: follower.last_loss,
        eval_loss: follower.eval_loss,
        curve: follower.curve,
        evals: follower.evals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_records_become_distill_lines() {
        let mut f = Follower::default();
        let step = |step: u64, loss: f64, tokens: f64| {
            json!({"step": step, "max_steps": 10, "loss": loss, "grad_norm": 1.5,
                   "learning_rate": 0.001, "num_tokens": tokens, "epoch": 0.1})
        };
        let Record::Step { line, message } = f.record(&step(1, 5.5, 1000.0), 2.0) else {
            panic!("a step");
        };
        assert_eq!(
            line,
            json!({"step": 1, "loss": 5.5, "lr": 0.001, "grad_norm": 1.5, "tokens": 1000,
                   "tokens_per_sec": 500.0, "seconds": 2.0, "epoch": 0.1, "engine": "trl"})
        );
        assert_eq!(message, "loss 5.5000  lr 1.00e-3  500 tok/s");
        let Record::Step { line, .. } = f.record(&step(2, 5.0, 1800.0), 4.0) else {
            panic!("a step");
        };
        assert_eq!(line["tokens"], 800);
        assert_eq!(line["tokens_per_sec"], 400.0);
        assert_eq!(
            f.record(&json!({"step": 2, "eval_loss": 4.5}), 5.0),
            Record::Eval {
                line: json!({"step": 2, "eval_loss": 4.5}),
                step: 2,
                loss: 4.5
            }
        );
        assert_eq!(
            f.record(&json!({"step": 2, "train_runtime": 4.0}), 5.0),
            Record::Other
        );
        assert_eq!(
            (f.steps, f.max_steps, f.last_loss),
            (2, Some(10), Some(5.0))
        );
        assert_eq!(f.curve, vec![(1, 5.5), (2, 5.0)]);
        assert_eq!(f.evals, vec![(2, 4.5)]);
    }
}
