//! One value of a `train` option as a grid gives it, and the two ways it is written out: on
//! `train`'s command line (exact) and in a run directory's name (short and readable).

use serde::{Deserialize, Serialize};

/// An option value: TOML integers, floats and strings (a list such as `digits = [0, 1]` is
/// kept as its comma-separated text, which is what `train` takes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OptValue {
    Int(i64),
    Float(f64),
    Text(String),
}

impl OptValue {
    /// The argument given to `train`: Rust's shortest round-trip text for floats, so `train`
    /// parses back exactly the grid's value.
    pub fn cli_text(&self) -> String {
        match self {
            OptValue::Int(i) => i.to_string(),
            OptValue::Float(f) => f.to_string(),
            OptValue::Text(s) => s.clone(),
        }
    }

    /// The value in a run directory's name: floats in the shorter of plain and scientific
    /// notation (`0.1`, `1e-8`), commas of lists as `+` (commas separate the options).
    pub fn name_text(&self) -> String {
        match self {
            OptValue::Int(i) => i.to_string(),
            OptValue::Float(f) => {
                let (plain, sci) = (f.to_string(), format!("{f:e}"));
                if sci.len() < plain.len() {
                    sci
                } else {
                    plain
                }
            }
            OptValue::Text(s) => s
                .chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| if c == ',' { '+' } else { c })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_cli_text_is_exact() {
        assert_eq!(OptValue::Float(1e-8).name_text(), "1e-8");
        assert_eq!(OptValue::Float(0.15).name_text(), "0.15");
        assert_eq!(OptValue::Float(0.0).name_text(), "0");
        assert_eq!(
            OptValue::Float(1e-8).cli_text().parse::<f64>().unwrap(),
            1e-8
        );
        assert_eq!(OptValue::Text("0, 1,2".into()).name_text(), "0+1+2");
        assert_eq!(OptValue::Int(-3).cli_text(), "-3");
    }
}
