//! The Python that runs TRL: which one (`trl.python`, else `$DISTILL_TRL_PYTHON`, else the venv
//! `engines/trl/setup.sh` makes), and a check, before anything runs, that it has the packages
//! at the versions `engines/trl/requirements.txt` pins (DeepSpeed and bitsandbytes from
//! `requirements-optional.txt` when the job needs them). The first missing or mismatched
//! package is named in one line with the command that fixes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::settings::{Distributed, TrlSettings};

pub const REQUIREMENTS: &str = include_str!("../../../engines/trl/requirements.txt");
pub const OPTIONAL: &str = include_str!("../../../engines/trl/requirements-optional.txt");
/// Names the Python to use (after `trl.python`).
pub const PYTHON_ENV: &str = "DISTILL_TRL_PYTHON";
/// What makes the venv.
pub const SETUP: &str = "bash engines/trl/setup.sh";

/// `name==version` from a requirements file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub name: String,
    pub version: String,
}

/// The `name==version` lines of a requirements file (comments and blank lines skipped).
pub fn pins(text: &str) -> Vec<Pin> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once("=="))
        .map(|(name, version)| Pin {
            name: name.trim().to_string(),
            version: version.trim().to_string(),
        })
        .collect()
}

/// The packages a job with `trl` settings needs.
pub fn required(trl: &TrlSettings) -> Vec<Pin> {
    let mut out = pins(REQUIREMENTS);
    for pin in pins(OPTIONAL) {
        let needed = match pin.name.as_str() {
            "deepspeed" => trl.distributed == Distributed::Zero3,
            "bitsandbytes" => trl.load_in_4bit,
            _ => false,
        };
        if needed {
            out.push(pin);
        }
    }
    out
}

/// The Python to run: `trl.python`, else `$DISTILL_TRL_PYTHON`, else
/// `~/.cache/distill-trl-venv/bin/python`.
pub fn python(trl: &TrlSettings) -> anyhow::Result<PathBuf> {
    if let Some(path) = &trl.python {
        return Ok(path.clone());
    }
    if let Some(path) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("cannot find the TRL venv: set HOME, `DISTILL_TRL_PYTHON` or `trl.python`")?;
    Ok(PathBuf::from(home).join(".cache/distill-trl-venv/bin/python"))
}

/// Asks `python` for the installed versions of `names` (`None`: not installed).
fn installed(python: &Path, names: &[&str]) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    const PROBE: &str = "import json, sys\n\
        from importlib.metadata import version, PackageNotFoundError\n\
        found = {}\n\
        for name in sys.argv[1:]:\n    \
            try:\n        found[name] = version(name)\n    \
            except PackageNotFoundError:\n        found[name] = None\n\
        print(json.dumps(found))\n";
    let out = Command::new(python)
        .arg("-c")
        .arg(PROBE)
        .args(names)
        .output()
        .with_context(|| format!("cannot run the TRL engine's Python `{}`", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!(
            "the TRL engine's Python `{}` failed to list its packages: {}",
            python.display(),
            err.lines().last().unwrap_or("no output").trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| {
        format!(
            "the TRL engine's Python `{}` answered `{line}` for its packages",
            python.display()
        )
    })
}

/// The first problem with `found` against `required`, in words (`None`: all as pinned). A local
/// version label (`2.15.0+cu132`) matches its public version.
pub fn verdict(required: &[Pin], found: &BTreeMap<String, Option<String>>) -> Option<String> {
    let problems: Vec<String> = required
        .iter()
        .filter_map(|pin| match found.get(&pin.name).cloned().flatten() {
            None => Some(format!("`{}=={}` is not installed", pin.name, pin.version)),
            Some(v) if v.split('+').next() != Some(pin.version.as_str()) => Some(format!(
                "`{}=={}` is pinned, `{v}` is installed",
                pin.name, pin.version
            )),
            Some(_) => None,
        })
        .collect();
    let first = problems.first()?;
    Some(match problems.len() {
        1 => first.clone(),
        n => format!("{first} (and {} more)", n - 1),
    })
}

/// Fails in one line unless `python` exists and has every package of `required` at its pin.
pub fn check(python: &Path, required: &[Pin]) -> anyhow::Result<()> {
    let fix = format!(
        "run `{SETUP}` (or point `{PYTHON_ENV}` or `trl.python` at a Python that has them)"
    );
    if !python.exists() {
        anyhow::bail!(
            "the TRL engine's Python `{}` does not exist: {fix}",
            python.display()
        );
    }
    let names: Vec<&str> = required.iter().map(|p| p.name.as_str()).collect();
    let found = installed(python, &names)?;
    if let Some(problem) = verdict(required, &found) {
        anyhow::bail!(
            "the TRL engine's Python `{}`: {problem}; {fix}",
            python.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_pins() {
        let names: Vec<String> = pins(REQUIREMENTS).into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "torch",
                "transformers",
                "trl",
                "accelerate",
                "datasets",
                "peft"
            ]
        );
        let zero3 = TrlSettings {
            distributed: Distributed::Zero3,
            ..Default::default()
        };
        assert_eq!(required(&zero3).last().unwrap().name, "deepspeed");
        let qlora = TrlSettings {
            lora_r: 8,
            load_in_4bit: true,
            ..Default::default()
        };
        assert_eq!(required(&qlora).last().unwrap().name, "bitsandbytes");
        assert_eq!(required(&TrlSettings::default()).len(), 6);
    }

    #[test]
    fn verdicts_name_the_first_problem() {
        let required = pins("torch==2.15.0\ntrl==1.16.0  # comment\n\n# x==1\npeft==0.21.2\n");
        assert_eq!(required.len(), 3);
        let found = |entries: &[(&str, Option<&str>)]| -> BTreeMap<String, Option<String>> {
            entries
                .iter()
                .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
                .collect()
        };
        let all = found(&[
            ("torch", Some("2.15.0+cu132")),
            ("trl", Some("1.16.0")),
            ("peft", Some("0.21.2")),
        ]);
        assert_eq!(verdict(&required, &all), None);
        let old = found(&[
            ("torch", Some("2.15.0")),
            ("trl", Some("1.15.0")),
            ("peft", None),
        ]);
        assert_eq!(
            verdict(&required, &old).unwrap(),
            "`trl==1.16.0` is pinned, `1.15.0` is installed (and 1 more)"
        );
        let missing = found(&[("torch", Some("2.15.0")), ("trl", Some("1.16.0"))]);
        assert_eq!(
            verdict(&required, &missing).unwrap(),
            "`peft==0.21.2` is not installed"
        );
    }
}
