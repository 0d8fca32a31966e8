//! An API key: the one the `openai` client sends to an endpoint and the one `distill serve`
//! requires (`--api-key-env`), read from an environment variable and never printed.

use crate::{Error, Result};

/// An API key, the client's to send or `distill serve`'s to require; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key given directly (a server embedded in another program).
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key held by the environment variable `name` (surrounding blanks trimmed); an unset
    /// or blank variable is an error naming it.
    pub fn from_env(name: &str) -> Result<Self> {
        match std::env::var(name) {
            Ok(key) if !key.trim().is_empty() => Ok(Self(key.trim().to_string())),
            _ => Err(Error::ApiKeyMissing {
                name: name.to_string(),
            }),
        }
    }

    /// The key itself, for the request header only.
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this key, compared in time that does not depend on where they
    /// differ (a server's check must not tell a guesser how much of a key was right).
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(
            format!("{:?}", ApiKey("sk-secret".into())),
            "ApiKey(<redacted>)"
        );
    }
}
