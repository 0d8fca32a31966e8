//! A small YAML writer for the files handed to TRL and accelerate: block mappings, comments,
//! and scalars written so that PyYAML (YAML 1.1, what both engines parse with) reads back the
//! type meant. Strings are always double-quoted (JSON escapes are valid YAML); floats always
//! carry a `.` (PyYAML reads `1e-05` as a string, `0.00001` as a float). Output is
//! deterministic, so generated files can be compared byte for byte.

use std::fmt::Write;

/// One scalar value.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl From<bool> for Scalar {
    fn from(v: bool) -> Self {
        Scalar::Bool(v)
    }
}

impl From<usize> for Scalar {
    fn from(v: usize) -> Self {
        Scalar::Int(v as i64)
    }
}

impl From<u64> for Scalar {
    fn from(v: u64) -> Self {
        Scalar::Int(v as i64)
    }
}

impl From<f64> for Scalar {
    fn from(v: f64) -> Self {
        Scalar::Float(v)
    }
}

impl From<&str> for Scalar {
    fn from(v: &str) -> Self {
        Scalar::Str(v.to_string())
    }
}

impl From<String> for Scalar {
    fn from(v: String) -> Self {
        Scalar::Str(v)
    }
}

impl Scalar {
    fn write(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => float(*f),
            Scalar::Str(s) => serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()),
        }
    }
}

/// `f` in decimal notation with a `.`, so PyYAML reads a float (Rust's `Display` for `f64`
/// never uses an exponent and gives the shortest digits that round-trip).
pub fn float(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            ".nan".into()
        } else if f > 0.0 {
            ".inf".into()
        } else {
            "-.inf".into()
        };
    }
    let text = f.to_string();
    if text.contains('.') {
        text
    } else {
        text + ".0"
    }
}

/// A YAML document built top to bottom.
#[derive(Debug, Default)]
pub struct Doc {
    text: String,
    depth: usize,
}

impl Doc {
    pub fn new() -> Self {
        Self::default()
    }

    fn indent(&self) -> String {
        "  ".repeat(self.depth)
    }

    /// A `# …` comment line (each line of `text`).
    pub fn comment(&mut self, text: &str) -> &mut Self {
        for line in text.lines() {
            let _ = if line.is_empty() {
                writeln!(self.text, "{}#", self.indent())
            } else {
                writeln!(self.text, "{}# {line}", self.indent())
            };
        }
        self
    }

    pub fn blank(&mut self) -> &mut Self {
        self.text.push('\n');
        self
    }

    /// `key: value`.
    pub fn field(&mut self, key: &str, value: impl Into<Scalar>) -> &mut Self {
        let _ = writeln!(
            self.text,
            "{}{key}: {}",
            self.indent(),
            value.into().write()
        );
        self
    }

    /// `key: value` when there is a value.
    pub fn optional(&mut self, key: &str, value: Option<impl Into<Scalar>>) -> &mut Self {
        if let Some(v) = value {
            self.field(key, v);
        }
        self
    }

    /// `key:` followed by `- item` lines.
    pub fn list(&mut self, key: &str, items: &[Scalar]) -> &mut Self {
        if items.is_empty() {
            let _ = writeln!(self.text, "{}{key}: []", self.indent());
            return self;
        }
        let _ = writeln!(self.text, "{}{key}:", self.indent());
        for item in items {
            let _ = writeln!(self.text, "{}  - {}", self.indent(), item.write());
        }
        self
    }

    /// `key:` followed by a nested mapping written by `body`.
    pub fn map(&mut self, key: &str, body: impl FnOnce(&mut Doc)) -> &mut Self {
        let _ = writeln!(self.text, "{}{key}:", self.indent());
        self.depth += 1;
        body(self);
        self.depth -= 1;
        self
    }

    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_keep_their_type_for_pyyaml() {
        assert_eq!(float(2e-5), "0.00002");
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(0.1), "0.1");
        assert_eq!(float(3.0), "3.0");
        assert_eq!(Scalar::from("yes").write(), "\"yes\"");
        assert_eq!(Scalar::from("a \"b\"\n").write(), "\"a \\\"b\\\"\\n\"");
        assert_eq!(Scalar::from(7usize).write(), "7");
    }

    #[test]
    fn nested_document() {
        let mut doc = Doc::new();
        doc.comment("top\n\nend").field("a", 1usize).map("b", |d| {
            d.field("c", true)
                .list("d", &["x".into(), Scalar::Int(2)])
                .list("e", &[]);
        });
        doc.optional("f", None::<&str>).optional("g", Some(0.5));
        assert_eq!(
            doc.finish(),
            "# top\n#\n# end\na: 1\nb:\n  c: true\n  d:\n    - \"x\"\n    - 2\n  e: []\ng: 0.5\n"
        );
    }
}
