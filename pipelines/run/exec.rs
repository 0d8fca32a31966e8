//! Runs a pipeline's stages in order with manifests: finished stages with an unchanged config are
//! skipped, an interrupted stage is resumed (the stage itself knows how: `generate` skips rows it
//! has, `train` continues from its last checkpoint), and a stage whose config or upstream changed
//! starts over. Inputs are checked before any work starts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::manifest::{config_hash, now, StageManifest, Status};

/// One stage, fully resolved: its config (hashed into the manifest), what it reads and writes,
/// and the work itself.
pub struct StagePlan<'a> {
    pub name: &'static str,
    pub config: serde_json::Value,
    pub inputs: Vec<PathBuf>,
    pub outputs: Vec<PathBuf>,
    pub run: Box<dyn Fn(Resume) -> anyhow::Result<()> + 'a>,
}

/// How a stage is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Outputs were cleared: start from nothing.
    Fresh,
    /// The stage was interrupted with the same config: continue from what it wrote.
    Continue,
}

/// Which stages to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Re-run this stage and everything after it.
    pub from: Option<String>,
    /// Re-run only this stage.
    pub only: Option<String>,
}

/// What happened to each stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Skipped,
    Resumed,
    Ran,
    NotSelected,
}

/// Runs `stages` under `out`, reporting each stage's start through `on_stage`.
pub fn execute(
    out: &Path,
    stages: &[StagePlan],
    selection: &Selection,
    mut on_stage: impl FnMut(&str, &Outcome),
) -> anyhow::Result<Vec<(String, Outcome)>> {
    let names: Vec<&str> = stages.iter().map(|s| s.name).collect();
    for wanted in [&selection.from, &selection.only].into_iter().flatten() {
        if !names.contains(&wanted.as_str()) {
            bail!("unknown stage `{wanted}` (stages: {})", names.join(", "));
        }
    }
    let position = |name: &Option<String>| {
        name.as_ref()
            .and_then(|n| names.iter().position(|s| s == n))
    };
    let (from, only) = (position(&selection.from), position(&selection.only));
    let selected = |i: usize| match (only, from) {
        (Some(o), _) => i == o,
        (None, Some(f)) => i >= f,
        (None, None) => true,
    };
    let forced = |i: usize| only == Some(i) || from.is_some_and(|f| i >= f);

    preflight(stages, &selected)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create `{}`", out.display()))?;

    let mut upstream_ran = false;
    let mut report = Vec::with_capacity(stages.len());
    for (i, stage) in stages.iter().enumerate() {
        if !selected(i) {
            report.push((stage.name.to_string(), Outcome::NotSelected));
            continue;
        }
        let hash = config_hash(&stage.config);
        let previous = StageManifest::read(out, stage.name)?;
        let same =
            previous.as_ref().is_some_and(|m| m.config_hash == hash) && !upstream_ran && !forced(i);
        let outputs_exist = stage.outputs.iter().all(|p| p.exists());
        let outcome = match previous.as_ref().map(|m| m.status) {
            Some(Status::Done) if same && outputs_exist => Outcome::Skipped,
            Some(Status::Running) if same => Outcome::Resumed,
            _ => Outcome::Ran,
        };
        on_stage(stage.name, &outcome);
        if outcome != Outcome::Skipped {
            if outcome == Outcome::Ran {
                for path in &stage.outputs {
                    remove(path)?;
                }
            }
            let mut manifest = StageManifest {
                stage: stage.name.to_string(),
                status: Status::Running,
                config_hash: hash,
                config: stage.config.clone(),
                inputs: stage.inputs.clone(),
                outputs: stage.outputs.clone(),
                started: now(),
                finished: None,
            };
            manifest.write(out)?;
            let resume = if outcome == Outcome::Resumed {
                Resume::Continue
            } else {
                Resume::Fresh
            };
            (stage.run)(resume).with_context(|| format!("stage `{}` failed", stage.name))?;
            manifest.status = Status::Done;
            manifest.finished = Some(now());
            manifest.write(out)?;
            upstream_ran = true;
        }
        report.push((stage.name.to_string(), outcome));
    }
    Ok(report)
}

/// Every input of a selected stage must exist already or be written by an earlier stage that
/// will run; otherwise name the stage that produces it.
fn preflight(stages: &[StagePlan], selected: &dyn Fn(usize) -> bool) -> anyhow::Result<()> {
    for (i, stage) in stages.iter().enumerate().filter(|(i, _)| selected(*i)) {
        for input in &stage.inputs {
            if input.exists() {
                continue;
            }
            let producer = stages[..i]
                .iter()
                .enumerate()
                .find(|(_, s)| s.outputs.iter().any(|o| input.starts_with(o)));
            match producer {
                Some((j, _)) if selected(j) => {}
                Some((_, p)) => bail!(
                    "stage `{}` needs `{}`, which stage `{}` produces and has not produced yet \
                     (run with `--from {}`)",
                    stage.name,
                    input.display(),
                    p.name,
                    p.name
                ),
                None => bail!(
                    "stage `{}` needs `{}`, which does not exist",
                    stage.name,
                    input.display()
                ),
            }
        }
    }
    Ok(())
}

fn remove(path: &Path) -> anyhow::Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else if path.exists() {
        std::fs::remove_file(path)
    } else {
        Ok(())
    };
    result.with_context(|| format!("cannot remove old output `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Three stages a → b → c, each writing one file from its input; `fail_b` makes b fail
    /// after writing a partial output once.
    fn plan<'a>(
        dir: &Path,
        log: &'a RefCell<Vec<String>>,
        b_param: u32,
        fail_b: &'a RefCell<bool>,
    ) -> Vec<StagePlan<'a>> {
        let (a, b, c) = (dir.join("a.txt"), dir.join("b.txt"), dir.join("c.txt"));
        let (a1, b1, c1) = (a.clone(), b.clone(), c.clone());
        let (a2, b2) = (a.clone(), b.clone());
        vec![
            StagePlan {
                name: "a",
                config: serde_json::json!({}),
                inputs: vec![],
                outputs: vec![a.clone()],
                run: Box::new(move |r| {
                    log.borrow_mut().push(format!("a:{r:?}"));
                    Ok(std::fs::write(&a1, "a")?)
                }),
            },
            StagePlan {
                name: "b",
                config: serde_json::json!({ "param": b_param }),
                inputs: vec![a2],
                outputs: vec![b.clone()],
                run: Box::new(move |r| {
                    log.borrow_mut().push(format!("b:{r:?}"));
                    if *fail_b.borrow() {
                        std::fs::write(&b1, "partial")?;
                        bail!("interrupted");
                    }
                    Ok(std::fs::write(&b1, "b")?)
                }),
            },
            StagePlan {
                name: "c",
                config: serde_json::json!({}),
                inputs: vec![b2],
                outputs: vec![c.clone()],
                run: Box::new(move |r| {
                    log.borrow_mut().push(format!("c:{r:?}"));
                    Ok(std::fs::write(&c1, "c")?)
                }),
            },
        ]
    }

    fn run(
        dir: &Path,
        b_param: u32,
        fail: bool,
        sel: Selection,
    ) -> (anyhow::Result<Vec<(String, Outcome)>>, Vec<String>) {
        let log = RefCell::new(Vec::new());
        let fail_b = RefCell::new(fail);
        let stages = plan(dir, &log, b_param, &fail_b);
        let result = execute(dir, &stages, &sel, |_, _| {});
        drop(stages);
        (result, log.into_inner())
    }

    #[test]
    fn skips_finished_resumes_interrupted_and_reruns_changed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // b is interrupted: a done, b running, c never started.
        let (result, log) = run(d, 1, true, Selection::default());
        assert!(result.unwrap_err().to_string().contains("stage `b` failed"));
        assert_eq!(log, ["a:Fresh", "b:Fresh"]);
        // Rerun: a skipped, b continues from its partial output, c runs.
        let (result, log) = run(d, 1, false, Selection::default());
        assert_eq!(log, ["b:Continue", "c:Fresh"]);
        let outcomes: Vec<Outcome> = result.unwrap().into_iter().map(|(_, o)| o).collect();
        assert_eq!(outcomes, [Outcome::Skipped, Outcome::Resumed, Outcome::Ran]);
        // Nothing to do.
        let (_, log) = run(d, 1, false, Selection::default());
        assert!(log.is_empty(), "{log:?}");
        // b's config changes: b starts over and c (downstream) runs again; a stays.
        let (_, log) = run(d, 2, false, Selection::default());
        assert_eq!(log, ["b:Fresh", "c:Fresh"]);
        // --only and --from force reruns.
        let (_, log) = run(
            d,
            2,
            false,
            Selection {
                only: Some("a".into()),
                from: None,
            },
        );
        assert_eq!(log, ["a:Fresh"]);
        let (_, log) = run(
            d,
            2,
            false,
            Selection {
                from: Some("b".into()),
                only: None,
            },
        );
        assert_eq!(log, ["b:Fresh", "c:Fresh"]);
    }

    #[test]
    fn missing_input_names_its_producer_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let (result, log) = run(
            dir.path(),
            1,
            false,
            Selection {
                only: Some("c".into()),
                from: None,
            },
        );
        let err = result.unwrap_err().to_string();
        assert!(log.is_empty());
        assert!(
            err.contains("stage `c` needs") && err.contains("which stage `b` produces"),
            "{err}"
        );
        let (result, _) = run(
            dir.path(),
            1,
            false,
            Selection {
                only: Some("x".into()),
                from: None,
            },
        );
        assert_eq!(
            result.unwrap_err().to_string(),
            "unknown stage `x` (stages: a, b, c)"
        );
    }
}
