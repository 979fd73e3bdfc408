//! `analyze grokking` end to end on a small modular-addition run (p = 23, 300 epochs): `analyze
//! all` runs it on such a run, every value of `grokking.parquet` at the last snapshot matches
//! an independent f64 computation written here (the general forward pass, plain-loop
//! projections on the sum waves, a double-loop Gini coefficient over a plain DFT of the
//! embedding), the memorisation phase ends where the training loss falls below ln p / 100 by
//! the excursion-tolerant rule, and the digit analyses refuse the run with exit status 2.

mod common;

use std::collections::BTreeMap;
use std::f64::consts::PI;

use candle_core::{Device, Tensor};
use common::*;
use digitlab::model::{Hooks, Transformer};
use digitlab::task::TaskConfig;
use digitlab_snapshots::RunDir;

const P: usize = 23;

fn log_softmax_loss(row: &[f64], target: usize) -> f64 {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = row.iter().map(|x| (x - max).exp()).sum();
    -(row[target] - max - z.ln())
}

fn mean_loss(logits: &[Vec<f64>], rows: &[usize]) -> f64 {
    rows.iter()
        .map(|&g| log_softmax_loss(&logits[g], (g / P + g % P) % P))
        .sum::<f64>()
        / rows.len() as f64
}

/// Each output's grid projected on `cos/sin(w f (x + y))` for `f` in `freqs`, by plain loops.
fn projection(logits: &[Vec<f64>], freqs: &[usize]) -> Vec<Vec<f64>> {
    let mut proj = vec![vec![0.0; P]; P * P];
    for o in 0..P {
        for &f in freqs {
            let w = 2.0 * PI * f as f64 / P as f64;
            for wave in [f64::cos as fn(f64) -> f64, f64::sin] {
                let y = |g: usize| wave(w * (g / P + g % P) as f64);
                let num: f64 = (0..P * P).map(|g| y(g) * logits[g][o]).sum();
                let den: f64 = (0..P * P).map(|g| y(g) * y(g)).sum();
                for (g, row) in proj.iter_mut().enumerate() {
                    row[o] += num / den * y(g);
                }
            }
        }
    }
    proj
}

#[test]
fn grokking_tables_match_an_independent_computation() {
    setup();
    let scratch = Scratch::new("grokking");
    let run = scratch.path().join("m23");
    let mut cfg = config(TaskConfig::modp(P, 0.5, 50), 32, 4, 300);
    cfg.snapshot_every = 100;
    train_run(&run, &cfg);

    let out = analyze(&["all", s(&run), "-q"]);
    let text = succeeded(&out);
    assert!(text.contains("grokking ->"), "{text}");
    let grokking = table(&run, "grokking");
    assert_eq!(grokking.height(), 4 * 6, "4 snapshots x 6 metrics");
    let last = values_by(&grokking, &["batch", "metric"])
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("300|").map(|m| (m.to_string(), v)))
        .collect::<BTreeMap<String, f64>>();
    let key_set = cell(&grokking, "key_set", 2);
    let key: Vec<usize> = key_set
        .split(',')
        .filter(|s| !s.is_empty() && *s != "null")
        .map(|s| s.parse().unwrap())
        .collect();

    // The model at the last snapshot, on the whole grid in f64.
    let dir = RunDir::open(&run).unwrap();
    let entry = dir.manifest().snapshots.last().unwrap().clone();
    assert_eq!(entry.batch, 300);
    let snapshot = dir.read_snapshot(&entry).unwrap();
    let model = Transformer::from_params(&cfg.model, &snapshot.tensors, &Device::Cpu).unwrap();
    let tokens: Vec<u32> = (0..P * P)
        .flat_map(|g| [(g / P) as u32, (g % P) as u32, P as u32])
        .collect();
    let tokens = Tensor::from_vec(tokens, (P * P, 3), &Device::Cpu).unwrap();
    let logits: Vec<Vec<f64>> = model
        .forward(&tokens, &mut Hooks::none())
        .unwrap()
        .to_vec3::<f32>()
        .unwrap()
        .into_iter()
        .map(|row| row[2].iter().map(|&x| f64::from(x)).collect())
        .collect();

    let split = cfg.task.modp.as_ref().unwrap().split(cfg.seed);
    let train: Vec<usize> = split
        .train
        .iter()
        .map(|&(x, y)| x as usize * P + y as usize)
        .collect();
    let test: Vec<usize> = split
        .test
        .iter()
        .map(|&(x, y)| x as usize * P + y as usize)
        .collect();
    let all: Vec<usize> = (0..P * P).collect();
    let proj = projection(&logits, &key);
    let excluded: Vec<Vec<f64>> = logits
        .iter()
        .zip(&proj)
        .map(|(l, p)| l.iter().zip(p).map(|(a, b)| a - b).collect())
        .collect();
    let means: Vec<f64> = (0..P)
        .map(|o| logits.iter().map(|l| l[o]).sum::<f64>() / (P * P) as f64)
        .collect();
    let restricted: Vec<Vec<f64>> = proj
        .iter()
        .map(|p| p.iter().zip(&means).map(|(a, m)| a + m).collect())
        .collect();

    let w_e = snapshot
        .tensors
        .iter()
        .find(|t| t.name == "embed.W_E")
        .unwrap();
    let d = cfg.model.d_model;
    // Norm of the embedding along each vector of the real DFT basis on 0..p.
    let mut norms = Vec::new();
    let mut basis: Vec<Vec<f64>> = vec![vec![1.0; P]];
    for f in 1..=P / 2 {
        let w = 2.0 * PI * f as f64 / P as f64;
        basis.push((0..P).map(|x| (w * x as f64).cos()).collect());
        basis.push((0..P).map(|x| (w * x as f64).sin()).collect());
    }
    for u in &basis {
        let len = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        let mut sq = 0.0;
        for j in 0..d {
            let c: f64 = (0..P)
                .map(|x| u[x] / len * f64::from(w_e.data[x * d + j]))
                .sum();
            sq += c * c;
        }
        norms.push(sq.sqrt());
    }
    let mut diffs = 0.0;
    for a in &norms {
        for b in &norms {
            diffs += (a - b).abs();
        }
    }
    let gini = diffs / (2.0 * P as f64 * norms.iter().sum::<f64>());
    let mut squares = 0.0;
    for tensor in &snapshot.tensors {
        for &w in &tensor.data {
            squares += f64::from(w) * f64::from(w);
        }
    }

    let expected = [
        ("train_loss", mean_loss(&logits, &train)),
        ("test_loss", mean_loss(&logits, &test)),
        ("excluded_loss", mean_loss(&excluded, &train)),
        ("restricted_loss", mean_loss(&restricted, &all)),
        ("embedding_gini", gini),
        ("sum_squared_weights", squares),
    ];
    for (metric, want) in expected {
        let got = last[metric];
        assert!(
            close(got, want, 1e-5),
            "{metric}: table {got}, independent {want}"
        );
    }
    // The run memorises: fitted training set, unseen pairs above chance.
    assert!(last["train_loss"] < 0.1 && last["test_loss"] > (P as f64).ln());

    let phases = table(&run, "grokking_phases");
    assert_eq!(phases.height(), 3);
    assert_eq!(cell(&phases, "phase", 0), "memorisation");
    assert_eq!(int(&phases, "start_batch", 0), Some(0));
    let memorised = int(&phases, "end_batch", 0);
    assert_eq!(int(&phases, "start_batch", 1), memorised);
    // The rule: the first snapshot from which the training loss stays below ln p / 100, except
    // for excursions back at or above it of at most `max_excursion_batches` (1,000, longer than
    // this whole 300-epoch run: any excursion that comes back is forgiven, one still above at
    // the last snapshot is not).
    assert_eq!(int(&phases, "max_excursion_batches", 0), Some(1000));
    let train_curve: Vec<(i64, f64)> = [0, 100, 200, 300]
        .iter()
        .map(|b| {
            (
                *b,
                values_by(&grokking, &["batch", "metric"])[&format!("{b}|train_loss")],
            )
        })
        .collect();
    let fitted = (P as f64).ln() / 100.0;
    let want = match train_curve.last() {
        Some((_, v)) if *v < fitted => train_curve
            .iter()
            .find(|(_, v)| *v < fitted)
            .map(|(b, _)| *b),
        _ => None,
    };
    assert_eq!(memorised, want);

    for digit_analysis in ["loss", "excluded-loss", "phases", "naive-lens"] {
        let out = analyze(&[digit_analysis, s(&run)]);
        failed_with(&out, &["modular addition", "analyze grokking"]);
        assert_eq!(out.status.code(), Some(2), "{digit_analysis}");
    }
}
