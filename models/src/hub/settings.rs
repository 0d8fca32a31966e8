//! Where the hub and its cache are, read from the environment as `huggingface_hub` reads it.

use std::fmt;
use std::path::PathBuf;

use super::HubError;
use crate::Result;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the hub, from the environment as `huggingface_hub` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// Without a trailing `/`.
    pub endpoint: String,
    /// The hub cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`.
    pub cache: PathBuf,
    pub token: Option<Token>,
    /// `HF_HUB_OFFLINE`: the cache only, no network.
    pub offline: bool,
}

/// An access token and where it came from (named in errors; the token itself never is).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub value: String,
    pub source: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(from {})", self.source)
    }
}

impl HubSettings {
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
    }

    /// [`from_env`](Self::from_env) with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let home = match var("HF_HOME") {
            Some(home) => PathBuf::from(home),
            None => {
                let base = match (var("XDG_CACHE_HOME"), var("HOME")) {
                    (Some(xdg), _) => PathBuf::from(xdg),
                    (None, Some(home)) => PathBuf::from(home).join(".cache"),
                    (None, None) => {
                        return Err(HubError::NoCache.into());
                    }
                };
                base.join("huggingface")
            }
        };
        let cache = var("HF_HUB_CACHE").map_or_else(|| home.join("hub"), PathBuf::from);
        let token = match var("HF_TOKEN") {
            Some(value) => Some(Token {
                value: value.trim().to_string(),
                source: "HF_TOKEN".into(),
            }),
            None => {
                let file = home.join("token");
                std::fs::read_to_string(&file)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .map(|value| Token {
                        value,
                        source: format!("`{}`", file.display()),
                    })
            }
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        });
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
            .trim_end_matches('/')
            .to_string();
        Ok(Self {
            endpoint,
            cache,
            token,
            offline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn settings_follow_huggingface_hub() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let vars = |pairs: Vec<(&'static str, String)>| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        let s = HubSettings::from_vars(vars(vec![("HF_HOME", home.clone())])).unwrap();
        assert_eq!(s.cache, dir.path().join("hub"));
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(s.token.as_ref().unwrap().value, "hf_file");
        assert!(!s.offline);
        let s = HubSettings::from_vars(vars(vec![
            ("HF_HOME", home.clone()),
            ("HF_HUB_CACHE", "/elsewhere".into()),
            ("HF_TOKEN", "hf_env".into()),
            ("HF_ENDPOINT", "http://127.0.0.1:9/".into()),
            ("HF_HUB_OFFLINE", "yes".into()),
        ]))
        .unwrap();
        assert_eq!(s.cache, PathBuf::from("/elsewhere"));
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        assert_eq!(
            s.token,
            Some(Token {
                value: "hf_env".into(),
                source: "HF_TOKEN".into()
            })
        );
        assert!(s.offline);
        let s = HubSettings::from_vars(vars(vec![("HOME", "/home/u".into())])).unwrap();
        assert_eq!(s.cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(matches!(
            HubSettings::from_vars(|_| None),
            Err(Error::Hub(HubError::NoCache))
        ));
    }
}
