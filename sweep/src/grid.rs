//! The grid file: fixed `train` options, the axes to cross and the analyses to run, read from
//! TOML and expanded into points.
//!
//! ```toml
//! analyses = "all"                 # or "none", or a list: ["loss", "phases"]
//! [fixed]                          # train options every point shares
//! weight_decay = 0
//! steps = 6000
//! [axes]                           # crossed; the first axis varies slowest
//! model = [{ d_model = 128, n_heads = 4 }, { d_model = 8, n_heads = 1 }]   # options set together
//! lr = { log = [1e-4, 1e-2], n = 3 }                                       # 1e-4, 1e-3, 1e-2
//! seed = "0..3"                                                           # 0, 1, 2 ("0..=3": 0 to 3)
//! ```
//!
//! Option names are `train`'s long options with `_` or `-`. Whether `train` accepts a name or a
//! value is its own business: `sweep` asks it (see `check.rs`), so every option of `train` is
//! available and this file knows none of them, except those the sweep sets itself.

use anyhow::Result;
use toml::{Table, Value};

use crate::error::bad_input;
use crate::point::Point;
use crate::value::OptValue;

/// Options the sweep sets for every run, with the reason a grid cannot.
const SET_BY_SWEEP: [(&str, &str); 5] = [
    (
        "threads",
        "the sweep shares the cores among its runs (-j, or --cpus-per-task on SLURM)",
    ),
    ("quiet", "the sweep always runs train quietly"),
    ("resume", "the sweep resumes interrupted runs itself"),
    (
        "run_dir",
        "the sweep names each run's directory from its options",
    ),
    ("check", "the sweep uses it to validate points"),
];

/// An axis: its values, each setting one option (`seed = "0..3"`) or several together
/// (`model = [{ d_model = 8, n_heads = 1 }, …]`).
#[derive(Clone, Debug)]
struct Axis {
    entries: Vec<Vec<(String, OptValue)>>,
}

/// A parsed grid.
#[derive(Clone, Debug)]
pub struct Grid {
    /// `analyze` subcommands to run after each training, in order (`["all"]` by default).
    pub analyses: Vec<String>,
    fixed: Vec<(String, OptValue)>,
    axes: Vec<Axis>,
    /// The grid as the sweep ran it: the file's text, or with `--set` overrides the effective
    /// table written back as TOML.
    pub text: String,
}

impl Grid {
    /// Parse `text` (from `source`, named in errors) and apply `--set key=value` overrides.
    pub fn parse(text: &str, source: &str, overrides: &[String]) -> Result<Grid> {
        let mut table: Table = text.parse().map_err(|e: toml::de::Error| {
            bad_input(format!("{source} is not a valid grid file: {e}"))
        })?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        let text = if overrides.is_empty() {
            text.to_string()
        } else {
            let body = toml::to_string(&table).map_err(|e| bad_input(e.to_string()))?;
            format!(
                "# {source} with --set {}\n{body}",
                overrides.join(" --set ")
            )
        };
        let at = |key: &str| line_note(&text, key);
        let mut analyses = vec!["all".to_string()];
        let (mut fixed, mut axes) = (Vec::new(), Vec::new());
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("analyses", v) => {
                    analyses = parse_analyses(v).map_err(|m| bad_input(m + &at(key)))?
                }
                ("fixed", Value::Table(t)) => {
                    for (k, v) in t {
                        let name = option_name(k, &text)?;
                        let v = scalar(v)
                            .map_err(|m| bad_input(format!("[fixed] {k}: {m}{}", at(k))))?;
                        fixed.push((name, v));
                    }
                }
                ("axes", Value::Table(t)) => {
                    for (k, v) in t {
                        axes.push(parse_axis(k, v, &text)?);
                    }
                }
                ("fixed" | "axes", _) => {
                    return Err(bad_input(format!(
                        "`{key}` must be a table ([{key}]){}",
                        at(key)
                    )))
                }
                _ => {
                    return Err(bad_input(format!(
                        "unknown key `{key}`{}: a grid has `analyses`, [fixed] and [axes]",
                        at(key)
                    )))
                }
            }
        }
        if fixed.is_empty() && axes.is_empty() {
            return Err(bad_input(format!(
                "{source}: the grid is empty; give train options in [fixed] and the axes to cross in [axes]"
            )));
        }
        let grid = Grid {
            analyses,
            fixed,
            axes,
            text,
        };
        grid.check_each_option_once()?;
        Ok(grid)
    }

    /// Every point: the axes crossed (the first varies slowest), each with the fixed options.
    pub fn points(&self) -> Result<Vec<Point>> {
        let mut combos: Vec<Vec<(String, OptValue)>> = vec![Vec::new()];
        for axis in &self.axes {
            combos = combos
                .iter()
                .flat_map(|combo| {
                    axis.entries.iter().map(move |entry| {
                        let mut next = combo.clone();
                        next.extend(entry.iter().cloned());
                        next
                    })
                })
                .collect();
        }
        let points: Vec<Point> = combos
            .into_iter()
            .enumerate()
            .map(|(index, varying)| Point::new(index, varying, self.fixed.clone()))
            .collect::<Result<_>>()?;
        let mut by_name = std::collections::HashMap::new();
        for p in &points {
            if let Some(first) = by_name.insert(p.name.clone(), p.index) {
                return Err(bad_input(format!(
                    "points {first} and {} have the same options ({}): remove the repeated value",
                    p.index, p.name
                )));
            }
        }
        Ok(points)
    }

    /// The line of `key` in the grid text, for messages (` (line N)`, or nothing).
    pub fn line_note(&self, key: &str) -> String {
        line_note(&self.text, key)
    }

    /// An option in [fixed] and an axis, or in two axes, would be ambiguous.
    fn check_each_option_once(&self) -> Result<()> {
        let mut seen = std::collections::HashMap::new();
        let fixed = self.fixed.iter().map(|(k, _)| (k, "[fixed]".to_string()));
        let axes = self.axes.iter().enumerate().flat_map(|(i, a)| {
            let mut keys: Vec<&String> = a.entries.iter().flatten().map(|(k, _)| k).collect();
            keys.dedup();
            keys.into_iter()
                .map(move |k| (k, format!("axis {}", i + 1)))
        });
        for (key, place) in fixed.chain(axes) {
            if let Some(other) = seen.insert(key.clone(), place.clone()) {
                if other != place {
                    return Err(bad_input(format!(
                        "option `{key}` is set in {other} and in {place}{}: give it one place",
                        self.line_note(key)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// `analyses = "all" | "none" | ["loss", …]`.
fn parse_analyses(value: &Value) -> std::result::Result<Vec<String>, String> {
    match value {
        Value::String(s) if s == "none" => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(list) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                "`analyses` must be \"all\", \"none\" or a list of analyze subcommands".to_string()
            }),
        _ => {
            Err("`analyses` must be \"all\", \"none\" or a list of analyze subcommands".to_string())
        }
    }
}

/// One axis: a list of values, a list of tables (options set together), an integer range
/// `"a..b"` / `"a..=b"`, or log-spaced values `{ log = [lo, hi], n = k }`.
fn parse_axis(key: &str, value: &Value, text: &str) -> Result<Axis> {
    let at = line_note(text, key);
    let fail = |m: String| bad_input(format!("axis `{key}`{at}: {m}"));
    let entries: Vec<Vec<(String, OptValue)>> = match value {
        Value::Array(list) if list.iter().all(Value::is_table) && !list.is_empty() => list
            .iter()
            .map(|v| {
                let table = v.as_table().expect("checked above");
                if table.is_empty() {
                    return Err(fail("an entry sets no option".to_string()));
                }
                table
                    .iter()
                    .map(|(k, v)| {
                        let v = scalar(v).map_err(|m| fail(format!("{k}: {m}")))?;
                        Ok((option_name(k, text)?, v))
                    })
                    .collect()
            })
            .collect::<Result<_>>()?,
        Value::Array(list) => {
            let name = option_name(key, text)?;
            list.iter()
                .map(|v| Ok(vec![(name.clone(), scalar(v).map_err(fail)?)]))
                .collect::<Result<_>>()?
        }
        Value::String(range) => {
            let name = option_name(key, text)?;
            parse_range(range)
                .map_err(fail)?
                .into_iter()
                .map(|i| vec![(name.clone(), OptValue::Int(i))])
                .collect()
        }
        Value::Table(spec) => {
            let name = option_name(key, text)?;
            log_spaced(spec)
                .map_err(fail)?
                .into_iter()
                .map(|f| vec![(name.clone(), OptValue::Float(f))])
                .collect()
        }
        _ => {
            return Err(fail(
                "give a list, a range \"a..b\" or { log = [lo, hi], n = k }; a single value goes in [fixed]"
                    .to_string(),
            ))
        }
    };
    if entries.is_empty() {
        return Err(fail(
            "it has no values, so the grid has no points".to_string(),
        ));
    }
    Ok(Axis { entries })
}

/// `"a..b"` (a to b-1) or `"a..=b"` (a to b), integers.
fn parse_range(text: &str) -> std::result::Result<Vec<i64>, String> {
    let bad = || format!("`{text}` is not a range: write \"0..5\" (0 to 4) or \"0..=5\"");
    let (start, end, inclusive) = match text.split_once("..=") {
        Some((a, b)) => (a, b, true),
        None => {
            let (a, b) = text.split_once("..").ok_or_else(bad)?;
            (a, b, false)
        }
    };
    let start: i64 = start.trim().parse().map_err(|_| bad())?;
    let end: i64 = end.trim().parse().map_err(|_| bad())?;
    Ok(if inclusive {
        (start..=end).collect()
    } else {
        (start..end).collect()
    })
}

/// `{ log = [lo, hi], n = k }`: k values from lo to hi (both included), equally spaced in
/// log, rounded to 3 significant digits so that run names stay readable.
fn log_spaced(spec: &Table) -> std::result::Result<Vec<f64>, String> {
    let usage = "write { log = [lo, hi], n = k } with 0 < lo, hi and k >= 1";
    let unknown: Vec<&String> = spec.keys().filter(|k| *k != "log" && *k != "n").collect();
    if !unknown.is_empty() {
        return Err(format!("unknown key `{}`: {usage}", unknown[0]));
    }
    let number = |v: &Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
    let bounds: Option<Vec<f64>> = spec
        .get("log")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(number).collect());
    let n = spec.get("n").and_then(Value::as_integer);
    let (Some([lo, hi]), Some(n)) = (bounds.as_deref(), n) else {
        return Err(usage.to_string());
    };
    if !(*lo > 0.0 && *hi > 0.0 && n >= 1) {
        return Err(usage.to_string());
    }
    let (a, b) = (lo.ln(), hi.ln());
    Ok((0..n)
        .map(|i| {
            let t = if n == 1 {
                0.0
            } else {
                i as f64 / (n - 1) as f64
            };
            let v = (a + t * (b - a)).exp();
            format!("{v:.2e}").parse().expect("formatted float parses")
        })
        .collect())
}

/// A value of an option: an integer, a float, a string, or a list of them (joined with `,`,
/// as in `--digits 0,1,2`).
fn scalar(value: &Value) -> std::result::Result<OptValue, String> {
    match value {
        Value::Integer(i) => Ok(OptValue::Int(*i)),
        Value::Float(f) => Ok(OptValue::Float(*f)),
        Value::String(s) => Ok(OptValue::Text(s.clone())),
        Value::Array(list) => {
            let parts: std::result::Result<Vec<String>, String> = list
                .iter()
                .map(|v| scalar(v).map(|v| v.cli_text()))
                .collect();
            Ok(OptValue::Text(parts?.join(",")))
        }
        Value::Boolean(_) => Err("train options take values, not true/false".to_string()),
        _ => Err(format!("`{value}` is not a number or a string")),
    }
}

/// `d-model` and `d_model` are the same option; options the sweep sets are refused.
fn option_name(key: &str, text: &str) -> Result<String> {
    let name = key.replace('-', "_");
    if let Some((_, why)) = SET_BY_SWEEP.iter().find(|(k, _)| *k == name) {
        return Err(bad_input(format!(
            "`{key}`{} cannot be set in a grid: {why}",
            line_note(text, key)
        )));
    }
    Ok(name)
}

/// `--set key=value`: the value is read as TOML (`0.1`, `[1, 2]`, `{ log = … }`), or else taken
/// as text (`0..5`, `answer`). An axis-shaped value (a list, a range, a log table) replaces or
/// adds an axis; anything else sets a fixed option, replacing an axis of that name.
fn apply_override(table: &mut Table, item: &str) -> Result<()> {
    let Some((key, text)) = item.split_once('=') else {
        return Err(bad_input(format!("--set takes key=value, got `{item}`")));
    };
    let key = key.trim().replace('-', "_");
    let text = text.trim();
    let value = format!("v = {text}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()));
    if key == "analyses" {
        table.insert(key, value);
        return Ok(());
    }
    let axis_shaped = match &value {
        Value::Array(_) | Value::Table(_) => true,
        Value::String(s) => parse_range(s).is_ok(),
        _ => false,
    };
    let (put, other) = if axis_shaped {
        ("axes", "fixed")
    } else {
        ("fixed", "axes")
    };
    for (section, insert) in [(other, false), (put, true)] {
        let entry = table
            .entry(section.to_string())
            .or_insert(Value::Table(Table::new()));
        let Value::Table(t) = entry else {
            return Err(bad_input(format!(
                "`{section}` must be a table ([{section}])"
            )));
        };
        t.retain(|k, _| k.replace('-', "_") != key);
        if insert {
            t.insert(key.clone(), value.clone());
        }
    }
    Ok(())
}

/// ` (line N)` for the first line where `key` is assigned or is a table's header, or "" if it
/// is not found (a key from `--set`). toml gives positions only for parse errors, so this
/// looks for `key =` and `[key]`.
fn line_note(text: &str, key: &str) -> String {
    let assigned = |line: &str| {
        line.trim() == format!("[{key}]")
            || line.match_indices(key).any(|(at, _)| {
                let before = line[..at].trim_end_matches('"').chars().last();
                let after = line[at + key.len()..].trim_start_matches('"').trim_start();
                matches!(before, None | Some(' ' | '{' | ',' | '\t')) && after.starts_with('=')
            })
    };
    text.lines()
        .position(assigned)
        .map_or(String::new(), |i| format!(" (line {})", i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BadInput;

    fn names(text: &str, overrides: &[&str]) -> Vec<String> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let grid = Grid::parse(text, "test.toml", &overrides).unwrap();
        grid.points().unwrap().into_iter().map(|p| p.name).collect()
    }

    fn error(text: &str) -> String {
        let err = Grid::parse(text, "test.toml", &[])
            .and_then(|g| g.points())
            .unwrap_err();
        assert!(
            err.downcast_ref::<BadInput>().is_some(),
            "not bad input: {err:#}"
        );
        err.to_string()
    }

    #[test]
    fn axes_cross_with_the_first_slowest_and_ranges_expand() {
        let got = names(
            "[fixed]\nsteps = 300\n[axes]\nd_model = [8, 16]\nseed = \"0..3\"\n",
            &[],
        );
        let want = [
            "d_model=8,seed=0,steps=300",
            "d_model=8,seed=1,steps=300",
            "d_model=8,seed=2,steps=300",
            "d_model=16,seed=0,steps=300",
            "d_model=16,seed=1,steps=300",
            "d_model=16,seed=2,steps=300",
        ];
        assert_eq!(got, want);
        assert_eq!(
            names("[axes]\nseed = \"1..=3\"\n", &[]),
            ["seed=1", "seed=2", "seed=3"]
        );
    }

    #[test]
    fn linked_axes_set_options_together_and_names_do_not_depend_on_file_order() {
        let a = "[axes]\nshape = [{ d_model = 128, n_heads = 4 }, { n_heads = 1, d_model = 8 }]\nseed = [0, 1]\n[fixed]\nweight_decay = 0.0\n";
        let b = "[fixed]\nweight-decay = 0\n[axes]\nshape = [{ n_heads = 4, d_model = 128 }, { d_model = 8, n_heads = 1 }]\nseed = [0, 1]\n";
        let want = [
            "d_model=128,n_heads=4,seed=0,weight_decay=0",
            "d_model=128,n_heads=4,seed=1,weight_decay=0",
            "d_model=8,n_heads=1,seed=0,weight_decay=0",
            "d_model=8,n_heads=1,seed=1,weight_decay=0",
        ];
        assert_eq!(names(a, &[]), want);
        assert_eq!(names(b, &[]), want);
    }

    #[test]
    fn log_spacing_matches_a_hand_written_list() {
        let grid = Grid::parse("[axes]\nlr = { log = [1e-4, 1e-2], n = 5 }\n", "t", &[]).unwrap();
        let lrs: Vec<f64> = grid
            .points()
            .unwrap()
            .iter()
            .map(|p| match p.options[0].1 {
                OptValue::Float(f) => f,
                ref other => panic!("{other:?}"),
            })
            .collect();
        // 10^-4, 10^-3.5, 10^-3, 10^-2.5, 10^-2 to 3 significant digits.
        assert_eq!(lrs, [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2]);
        assert_eq!(grid.points().unwrap()[1].name, "lr=3.16e-4");
        assert_eq!(grid.points().unwrap()[0].train_args(), ["--lr", "0.0001"]);
    }

    #[test]
    fn overrides_set_fixed_options_and_replace_axes() {
        let text = "[fixed]\nsteps = 300\n[axes]\nd_model = [8, 16]\nseed = [0, 1]\n";
        assert_eq!(
            names(text, &["steps=500", "seed=3..5", "d_model=4"]),
            // The axes first (seed), then the fixed options by name (d_model, steps).
            ["seed=3,d_model=4,steps=500", "seed=4,d_model=4,steps=500"]
        );
        assert_eq!(names(text, &["lr=[1e-3, 2e-3]"]).len(), 8);
        let grid = Grid::parse(text, "t", &["analyses=none".to_string()]).unwrap();
        assert!(grid.analyses.is_empty());
        assert!(
            grid.text.contains("steps = 300")
                && grid.text.starts_with("# t with --set analyses=none")
        );
    }

    #[test]
    fn names_are_unique_or_the_grid_is_refused() {
        let got = names("[axes]\nlr = [0.001, 0.01]\nd_mlp = [16, 32]\n", &[]);
        let unique: std::collections::HashSet<_> = got.iter().collect();
        assert_eq!(unique.len(), 4);
        assert!(error("[axes]\nseed = [1, 2, 1]\n").contains("same options"));
    }

    #[test]
    fn bad_grids_are_refused_with_the_key_and_line() {
        assert!(error("[axes]\nseed = [0, 1\n").contains("line 2"));
        let e = error("[fixed]\nsteps = 3\nfoo = 1\n[axis]\nseed = [0]\n");
        assert!(
            e.contains("unknown key `axis`") && e.contains("line 4"),
            "{e}"
        );
        assert!(error("[fixed]\nthreads = 2\n").contains("`threads`"));
        assert!(error("[fixed]\nquiet = true\n").contains("`quiet`"));
        assert!(error("[fixed]\ngrad_clip = true\n").contains("true/false"));
        assert!(error("").contains("empty"));
        let e = error("[axes]\nseed = []\n");
        assert!(e.contains("no values") && e.contains("line 2"), "{e}");
        assert!(error("[axes]\nseed = \"3..x\"\n").contains("not a range"));
        assert!(error("[axes]\nlr = { log = [0, 1], n = 3 }\n").contains("log"));
        assert!(error("[fixed]\nseed = 1\n[axes]\nseed = [1, 2]\n").contains("one place"));
        assert!(error("[axes]\nseed = 3\n").contains("[fixed]"));
    }
}
