//! What a model argument names: a local path, or a hub model `owner/name[@revision]` (with
//! `/FILE.gguf` or `:QUANT` to pick one file of a GGUF repo).

use std::fmt;
use std::path::{Path, PathBuf};

use super::is_gguf;

/// What a model argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    Local(PathBuf),
    Hub(HubRef),
}

/// A model (or dataset) repo on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `owner/name`.
    pub repo: String,
    /// A branch, tag or commit; `main` when absent.
    pub revision: Option<String>,
    /// Which `.gguf` file of a GGUF repo.
    pub gguf: Option<GgufPick>,
    pub kind: RepoKind,
}

/// Which kind of hub repo: they live under different URLs and cache folders
/// (`models--owner--name`, `datasets--owner--name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RepoKind {
    #[default]
    Model,
    Dataset,
}

impl fmt::Display for RepoKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        })
    }
}

/// A repo as messages name it: model `owner/name`, dataset `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    pub kind: RepoKind,
    pub id: String,
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.kind, self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufPick {
    /// A path inside the repo (`owner/name/sub/file.gguf`).
    File(String),
    /// A quantization named in the file name (`owner/name:Q4_K_M`).
    Quant(String),
}

impl ModelRef {
    /// An existing path is local; so is anything that is not shaped like a hub id (absolute or
    /// `./` paths, more than two segments not ending in `.gguf`, `dir/file.gguf`).
    pub fn parse(arg: &str) -> Self {
        if Path::new(arg).exists() {
            return Self::Local(arg.into());
        }
        HubRef::parse(arg).map_or_else(|| Self::Local(arg.into()), Self::Hub)
    }
}

impl HubRef {
    /// `owner/name[:QUANT | /FILE.gguf][@REVISION]`, or `None` when `arg` is not shaped like one.
    pub fn parse(arg: &str) -> Option<Self> {
        if arg.starts_with(['/', '.', '~'])
            || arg.contains('\\')
            || arg.contains(char::is_whitespace)
        {
            return None;
        }
        let (head, revision) = match arg.split_once('@') {
            Some((head, rev)) if !rev.is_empty() => (head, Some(rev.to_string())),
            Some(_) => return None,
            None => (arg, None),
        };
        let parts: Vec<&str> = head.split('/').collect();
        let (owner, name, gguf) = match parts.as_slice() {
            [owner, name] => match name.split_once(':') {
                Some((name, quant)) if valid_part(quant) => {
                    (*owner, name, Some(GgufPick::Quant(quant.to_string())))
                }
                Some(_) => return None,
                // `dir/model.gguf` is a local file that does not exist (repos are not named
                // `*.gguf`).
                None if is_gguf(name) => return None,
                None => (*owner, *name, None),
            },
            [owner, name, rest @ ..] => {
                let file = rest.join("/");
                if !is_gguf(&file) || rest.iter().any(|p| !valid_part(p)) {
                    return None;
                }
                (*owner, *name, Some(GgufPick::File(file)))
            }
            _ => return None,
        };
        if !valid_part(owner) || !valid_part(name) || owner.len() + name.len() > 96 {
            return None;
        }
        Some(Self {
            repo: format!("{owner}/{name}"),
            revision,
            gguf,
            kind: RepoKind::Model,
        })
    }

    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repo as messages name it.
    pub fn name(&self) -> RepoName {
        RepoName {
            kind: self.kind,
            id: self.repo.clone(),
        }
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repo)?;
        match &self.gguf {
            Some(GgufPick::File(file)) => write!(f, "/{file}")?,
            Some(GgufPick::Quant(quant)) => write!(f, ":{quant}")?,
            None => {}
        }
        match &self.revision {
            Some(rev) => write!(f, "@{rev}"),
            None => Ok(()),
        }
    }
}

/// Letters, digits, `.`, `_`, `-`; not starting or ending with `.` or `-`, no `..`.
fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !part.starts_with(['.', '-'])
        && !part.ends_with(['.', '-'])
        && !part.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(arg: &str) -> Option<HubRef> {
        match ModelRef::parse(arg) {
            ModelRef::Hub(h) => Some(h),
            ModelRef::Local(_) => None,
        }
    }

    #[test]
    fn model_arguments_parse() {
        let h = hub("Qwen/Qwen2.5-1.5B-Instruct").unwrap();
        assert_eq!(h.repo, "Qwen/Qwen2.5-1.5B-Instruct");
        assert_eq!((h.revision(), h.gguf.clone()), ("main", None));
        let h = hub("Qwen/Qwen2.5-1.5B-Instruct@v1.0").unwrap();
        assert_eq!(h.revision.as_deref(), Some("v1.0"));
        let h = hub("a/b-GGUF:Q4_K_M@refs/pr/1").unwrap();
        assert_eq!(h.gguf, Some(GgufPick::Quant("Q4_K_M".into())));
        assert_eq!(h.revision(), "refs/pr/1");
        assert_eq!(h.to_string(), "a/b-GGUF:Q4_K_M@refs/pr/1");
        let h = hub("a/b-GGUF/sub/model-q8_0.gguf").unwrap();
        assert_eq!(h.gguf, Some(GgufPick::File("sub/model-q8_0.gguf".into())));
        assert_eq!(h.to_string(), "a/b-GGUF/sub/model-q8_0.gguf");
        for local in [
            "/abs/path",
            "./rel/dir",
            "../shared/models/x.gguf",
            "models/teacher.gguf",
            "runs/demo/teacher/model",
            "single",
            "a/b@",
            "a/../b",
            "a/b c",
            "-a/b",
            "C:\\models\\x",
        ] {
            assert_eq!(hub(local), None, "{local}");
        }
        // An existing path always wins, even shaped like a hub id (tests run in the crate
        // folder, where `src/lib.rs` is).
        assert_eq!(hub("src/lib.rs"), None);
        assert!(HubRef::parse("src/lib.rs").is_some());
    }
}
