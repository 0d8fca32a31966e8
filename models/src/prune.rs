//! Depth pruning: a checkpoint cut down to a subset of its decoder layers, the starting point of
//! a student "initialised from the teacher's embeddings and a subset of its layers" (DistilBERT's
//! every-other-layer initialisation, Minitron's depth pruning). Embeddings, the final norm and
//! the output layer are kept whole; kept layers are renumbered in order.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Config, Error, Result};

/// Which decoder layers to keep, in increasing order: written `0-3,20-23` (or `0,2,4`) on the
/// command line, a list of indices or the same text in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LayerListRepr", into = "Vec<usize>")]
pub struct LayerList(Vec<usize>);

#[derive(Deserialize)]
#[serde(untagged)]
enum LayerListRepr {
    Text(String),
    Indices(Vec<usize>),
}

impl TryFrom<LayerListRepr> for LayerList {
    type Error = String;
    fn try_from(repr: LayerListRepr) -> std::result::Result<Self, String> {
        match repr {
            LayerListRepr::Text(text) => text.parse(),
            LayerListRepr::Indices(indices) => LayerList::new(indices),
        }
    }
}

impl From<LayerList> for Vec<usize> {
    fn from(list: LayerList) -> Self {
        list.0
    }
}

impl LayerList {
    /// Refuses an empty list and one that is not strictly increasing (a layer kept twice, or
    /// out of order, would not be a subset of the model).
    pub fn new(indices: Vec<usize>) -> std::result::Result<Self, String> {
        if indices.is_empty() {
            return Err("the list of layers to keep is empty".into());
        }
        if let Some(w) = indices.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "layers to keep must be increasing, each once: {} comes after {}",
                w[1], w[0]
            ));
        }
        Ok(Self(indices))
    }

    pub fn indices(&self) -> &[usize] {
        &self.0
    }

    /// Whether a model of `layers` decoder layers has every layer in the list.
    pub fn check_against(&self, layers: usize) -> std::result::Result<(), String> {
        match self.0.last() {
            Some(&last) if last >= layers => Err(format!(
                "cannot keep layer {last}: the model has {layers} layers (0-{})",
                layers.saturating_sub(1)
            )),
            _ => Ok(()),
        }
    }
}

impl FromStr for LayerList {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let index = |s: &str| {
            s.trim().parse::<usize>().map_err(|_| {
                format!(
                    "`{}` is not a layer index (write e.g. `0-3,20-23`)",
                    s.trim()
                )
            })
        };
        let mut indices = Vec::new();
        for part in text.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (index(a)?, index(b)?);
                    if a > b {
                        return Err(format!("the range `{}` runs backwards", part.trim()));
                    }
                    indices.extend(a..=b);
                }
                None => indices.push(index(part)?),
            }
        }
        LayerList::new(indices)
    }
}

impl fmt::Display for LayerList {
    /// Consecutive runs as ranges: `0-3,20-23`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            while i + 1 < self.0.len() && self.0[i + 1] == self.0[i] + 1 {
                i += 1;
            }
            parts.push(match self.0[i] {
                end if end == start => start.to_string(),
                end => format!("{start}-{end}"),
            });
            i += 1;
        }
        f.write_str(&parts.join(","))
    }
}

const LAYER_PREFIX: &str = "model.layers.";

/// Cuts `config` and its Hugging Face-named `weights` down to the layers in `keep`: kept layer
/// `keep[j]` becomes layer `j`; other layers' tensors are dropped. Per-layer config entries
/// follow: transformers 5's `layer_types` keeps the kept layers' entries (its length must equal
/// `num_hidden_layers` or transformers refuses the config), and `max_window_layers` (the first
/// layers that attend fully when sliding windows are on) becomes the count of kept layers below
/// it, so every kept layer attends as it did.
pub fn keep_layers<T>(
    config: &mut Config,
    weights: &mut HashMap<String, T>,
    keep: &LayerList,
) -> Result<()> {
    let layers = config.common().num_hidden_layers;
    keep.check_against(layers).map_err(Error::Config)?;
    // Checked before anything changes: an error leaves the config and weights as they were.
    if let Some(serde_json::Value::Array(types)) = config.extra().get("layer_types") {
        if types.len() != layers {
            return Err(Error::Config(format!(
                "`layer_types` lists {} layers but `num_hidden_layers` is {layers}",
                types.len()
            )));
        }
    }
    let keep = keep.indices();
    let new_index: HashMap<usize, usize> = keep.iter().enumerate().map(|(j, &l)| (l, j)).collect();
    let old = std::mem::take(weights);
    for (name, tensor) in old {
        let Some(rest) = name.strip_prefix(LAYER_PREFIX) else {
            weights.insert(name, tensor);
            continue;
        };
        let (layer, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let layer: usize = layer.parse().map_err(|_| {
            Error::Config(format!("tensor `{name}` does not name a layer by number"))
        })?;
        if let Some(j) = new_index.get(&layer) {
            weights.insert(format!("{LAYER_PREFIX}{j}.{tail}"), tensor);
        }
    }
    config.common_mut().num_hidden_layers = keep.len();
    let extra = config.extra_mut();
    if let Some(serde_json::Value::Array(types)) = extra.get_mut("layer_types") {
        *types = keep.iter().map(|&l| types[l].clone()).collect();
    }
    if let Some(window) = extra.get("max_window_layers").and_then(|v| v.as_u64()) {
        let below = keep.iter().filter(|&&l| (l as u64) < window).count();
        extra.insert("max_window_layers".into(), below.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lists_parse_and_print_as_ranges() {
        let list: LayerList = "0-3, 20-23".parse().unwrap();
        assert_eq!(list.indices(), &[0, 1, 2, 3, 20, 21, 22, 23]);
        assert_eq!(list.to_string(), "0-3,20-23");
        assert_eq!("0,2,4".parse::<LayerList>().unwrap().to_string(), "0,2,4");
        assert_eq!("7".parse::<LayerList>().unwrap().indices(), &[7]);
        for (bad, says) in [
            ("", "not a layer index"),
            ("0-3,x", "`x` is not a layer index"),
            ("3-1", "runs backwards"),
            ("0,2,2", "2 comes after 2"),
            ("4,1", "1 comes after 4"),
        ] {
            let err = bad.parse::<LayerList>().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        // In a config file: the same text, or a list.
        #[derive(Deserialize)]
        struct File {
            keep: LayerList,
        }
        let text: File = serde_json::from_str(r#"{"keep": "0-1,5"}"#).unwrap();
        let list: File = serde_json::from_str(r#"{"keep": [0, 1, 5]}"#).unwrap();
        assert_eq!(text.keep, list.keep);
        assert_eq!(list.keep.indices(), &[0, 1, 5]);
        assert!(serde_json::from_str::<File>(r#"{"keep": []}"#).is_err());
    }
}
