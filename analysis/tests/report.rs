//! Tests of `analyze report`: the figures are checked against the Parquet tables they come
//! from (trace counts and values recounted here with plain loops over the tables), the page
//! against its size budget and its single copy of plotly.js, the PNGs by decoding them, and
//! bad input through the `analyze` binary as a user meets it.
//!
//! Three kinds of runs: a synthetic 50 000-batch run whose tables are written here (a long log
//! with a known spike, without training for minutes), a real short run trained in-process
//! and analysed by the binary, and a real short modular-addition run whose page is checked
//! against `grokking.parquet`. The browser tests are in tests/python/test_report_browser.py.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use digitlab::config::TrainConfig;
use digitlab::task::{Layout, TaskConfig};
use digitlab::train::{new_run, train};
use digitlab_analysis::report::png::{HEIGHT, WIDTH};
use digitlab_analysis::report::run_page::LOSS_BUCKETS;
use digitlab_analysis::report::write_report;

#[path = "common/scratch.rs"]
mod scratch;
use digitlab_snapshots::{read_parquet, write_parquet_atomic};
use polars::prelude::{Column, DataFrame, DataType};
use scratch::copy_dir;
use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("report")
        .join(format!("p{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn analyze(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The figures of a page: the JSON in its `report-data` script.
fn page_figures(html: &str) -> Vec<Value> {
    let start_tag = "<script type=\"application/json\" id=\"report-data\">";
    let start = html.find(start_tag).expect("page has its data") + start_tag.len();
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str::<Value>(&html[start..end])
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn figure<'a>(figures: &'a [Value], id: &str) -> &'a Value {
    figures
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no figure {id}"))
}

fn traces(fig: &Value) -> &Vec<Value> {
    fig["data"].as_array().unwrap()
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// Decodes a PNG and checks what any figure must have: the agreed size, a plot (many colours,
/// not a blank canvas) and text (near-black glyph pixels in the title band at the top).
fn check_png(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width, info.height),
        (WIDTH, HEIGHT),
        "{}",
        path.display()
    );
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let pixels: Vec<[u8; 3]> = buf.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
    let non_white = pixels.iter().filter(|p| **p != [255, 255, 255]).count();
    assert!(
        non_white > pixels.len() / 200,
        "{} is nearly blank ({non_white} non-white pixels)",
        path.display()
    );
    let title_text = pixels[..(WIDTH * 40) as usize]
        .iter()
        .filter(|p| p.iter().all(|&c| c < 90))
        .count();
    assert!(
        title_text > 200,
        "{}: no title text ({title_text} dark pixels in the top band)",
        path.display()
    );
    buf
}

// ---------------------------------------------------------------------------------------------
// A synthetic 50 000-batch run: size budget, downsampling with the spike kept, log axes
// ---------------------------------------------------------------------------------------------

const LONG_STEPS: i64 = 50_000;
const SPIKE_BATCH: i64 = 31_337;
const TENSORS: [&str; 8] = [
    "embed.W_E",
    "pos_embed.W_pos",
    "blocks.0.attn.W_Q",
    "blocks.0.attn.W_K",
    "blocks.0.attn.W_V",
    "blocks.0.attn.W_O",
    "blocks.0.mlp.W_in",
    "blocks.0.mlp.W_out",
];

fn long_loss(b: i64) -> f32 {
    if b == SPIKE_BATCH {
        return 5.0;
    }
    // A descent with deterministic wiggles, so every bucket has a distinct min and max.
    let wiggle = 1.0 + 0.3 * ((b as f64) * 0.7).sin();
    ((2.3 * (-(b as f64) / 4000.0).exp() + 1e-4) * wiggle) as f32
}

fn write_long_run(dir: &Path) {
    let mut cfg = TrainConfig::default_for(
        TaskConfig {
            n_digits: 5,
            layout: Layout::Prompt,
            targets: vec![0],
            modp: None,
        },
        16,
        1,
    );
    cfg.steps = LONG_STEPS as u64;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();

    let batch: Vec<i64> = (0..LONG_STEPS).collect();
    let loss: Vec<f32> = batch.iter().map(|&b| long_loss(b)).collect();
    let mut columns = vec![
        Column::new("batch".into(), batch.clone()),
        Column::new("loss".into(), loss.clone()),
        Column::new("loss_digit_0".into(), loss.clone()),
        Column::new(
            "grad_norm".into(),
            loss.iter().map(|l| l * 3.0).collect::<Vec<f32>>(),
        ),
    ];
    for (k, t) in TENSORS.iter().enumerate() {
        for stat in ["grad_norm", "weight_norm", "update_norm"] {
            let v: Vec<f32> = loss.iter().map(|l| l * (k + 1) as f32).collect();
            columns.push(Column::new(format!("{stat}/{t}").into(), v));
        }
    }
    let mut log = DataFrame::new(LONG_STEPS as usize, columns).unwrap();
    write_parquet_atomic(&dir.join("train_log.parquet"), &mut log).unwrap();

    // loss.parquet: every 50 batches; the units digit has no carries, so the direct and
    // cascade rows are NaN as `analyze loss` writes them.
    let (mut b, mut kind, mut metric, mut value) = (vec![], vec![], vec![], vec![]);
    for snap in (0..LONG_STEPS).step_by(50) {
        for k in ["all", "none", "direct", "cascade"] {
            for m in ["loss", "accuracy"] {
                b.push(snap);
                kind.push(k);
                metric.push(m);
                value.push(if k == "direct" || k == "cascade" {
                    f64::NAN
                } else if m == "loss" {
                    f64::from(long_loss(snap))
                } else {
                    1.0 - f64::from(long_loss(snap)) / 2.4
                });
            }
        }
    }
    let n = b.len();
    let mut table = DataFrame::new(
        n,
        vec![
            Column::new("run".into(), vec!["long"; n]),
            Column::new("batch".into(), b),
            Column::new("digit".into(), vec![0i64; n]),
            Column::new("carry_kind".into(), kind),
            Column::new("metric".into(), metric),
            Column::new("value".into(), value),
            Column::new("contexts".into(), vec![100i64; n]),
            Column::new("eval_seed".into(), vec![1234i64; n]),
        ],
    )
    .unwrap();
    write_parquet_atomic(&dir.join("analysis/loss.parquet"), &mut table).unwrap();

    // An empty spike table with the columns `analyze spikes` writes.
    let mut spikes = DataFrame::new(
        0,
        vec![
            Column::new("run".into(), Vec::<String>::new()),
            Column::new("spike".into(), Vec::<i64>::new()),
            Column::new("series".into(), Vec::<String>::new()),
            Column::new("onset".into(), Vec::<i64>::new()),
            Column::new("peak".into(), Vec::<i64>::new()),
            Column::new("end".into(), Vec::<i64>::new()),
            Column::new("loss_peak".into(), Vec::<f64>::new()),
            Column::new("attributed".into(), Vec::<bool>::new()),
        ],
    )
    .unwrap();
    write_parquet_atomic(&dir.join("analysis/spikes.parquet"), &mut spikes).unwrap();
}

#[test]
fn a_50k_batch_run_stays_under_5_mb_keeps_its_spike_and_draws_loss_on_log_axes() {
    let dir = scratch("long");
    write_long_run(&dir);
    let written = write_report(&dir).unwrap();
    let html = std::fs::read_to_string(&written.html).unwrap();
    assert!(
        html.len() < 5_000_000,
        "page is {} bytes, over the 5 MB budget",
        html.len()
    );
    assert_eq!(
        html.matches("plotly.js (cartesian - minified)").count(),
        1,
        "exactly one copy of plotly.js"
    );
    let figures = page_figures(&html);

    let loss = figure(&figures, "loss");
    assert_eq!(loss["layout"]["yaxis"]["type"], "log");
    // Train + eval loss of digit 0; no spike markers (the spike table is empty).
    assert_eq!(traces(loss).len(), 2);
    let train = &traces(loss)[0];
    let (x, y) = (numbers(&train["x"]), numbers(&train["y"]));
    assert!(x.len() <= 2 * LOSS_BUCKETS + 2, "{} points", x.len());
    assert!(x.len() > LOSS_BUCKETS, "{} points", x.len());
    let at = x.iter().position(|&b| b == SPIKE_BATCH as f64);
    assert_eq!(
        at.map(|i| y[i]),
        Some(5.0),
        "the spike survives downsampling"
    );
    let global_min = (0..LONG_STEPS)
        .min_by(|&a, &b| long_loss(a).total_cmp(&long_loss(b)))
        .unwrap();
    assert!(x.contains(&(global_min as f64)), "the lowest loss is kept");
    for (b, v) in x.iter().zip(&y) {
        assert_eq!(
            *v as f32,
            long_loss(*b as i64),
            "batch {b}: a real logged value"
        );
    }

    // Carry kinds: only the kinds with finite values get a trace (recounted from the rows).
    let loss_table = read_parquet(&dir.join("analysis/loss.parquet")).unwrap();
    let kinds = loss_table.column("carry_kind").unwrap().str().unwrap();
    let values = loss_table.column("value").unwrap().f64().unwrap();
    let metrics = loss_table.column("metric").unwrap().str().unwrap();
    let finite_kinds: BTreeSet<&str> = (0..loss_table.height())
        .filter(|&i| metrics.get(i) == Some("loss") && kinds.get(i) != Some("all"))
        .filter(|&i| values.get(i).is_some_and(f64::is_finite))
        .map(|i| kinds.get(i).unwrap())
        .collect();
    let carry = figure(&figures, "carry_kind_loss");
    assert_eq!(traces(carry).len(), finite_kinds.len());
    assert_eq!(carry["layout"]["yaxis"]["type"], "log");

    // Norms: the global gradient norm plus one trace per tensor, log y.
    let grads = figure(&figures, "grad_norms");
    assert_eq!(traces(grads).len(), TENSORS.len() + 1);
    assert_eq!(grads["layout"]["yaxis"]["type"], "log");
    for id in ["weight_norms", "update_norms"] {
        assert_eq!(traces(figure(&figures, id)).len(), TENSORS.len());
    }

    // The page says what is missing.
    for needle in [
        "No loss spikes were detected",
        "naive_lens.parquet does not exist",
    ] {
        assert!(html.contains(needle), "page lacks {needle:?}");
    }

    // One PNG per figure, decodable, with a plot and text.
    let pngs: BTreeSet<String> = written
        .pngs
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let ids: BTreeSet<String> = figures
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pngs, ids);
    let rgb = check_png(&dir.join("figures/loss.png"));
    // The training-loss curve is drawn in the first palette colour.
    let curve = rgb.chunks(3).filter(|p| p == &[31, 119, 180]).count();
    assert!(curve > 1000, "{curve} pixels of the loss curve");
    for p in &written.pngs {
        check_png(p);
    }
    // The same figure as SVG, its title as text.
    assert_eq!(written.svgs.len(), written.pngs.len());
    let svg = std::fs::read_to_string(dir.join("figures/loss.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
    assert!(svg.contains("leave ln 10, and where does it settle?"));
    assert!(svg.contains("<polyline") || svg.contains("<path"));
}

// ---------------------------------------------------------------------------------------------
// A real short run, analysed and reported by the binary
// ---------------------------------------------------------------------------------------------

/// A trained and fully analysed run, made once per process; tests copy it before changing it.
fn real_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        digitlab::threads::set_threads(1);
        let dir = scratch("real").join("d16");
        let mut cfg = TrainConfig::default_for(
            TaskConfig {
                n_digits: 3,
                layout: Layout::Prompt,
                targets: vec![1],
                modp: None,
            },
            16,
            1,
        );
        cfg.steps = 300;
        cfg.snapshot_every = 50;
        cfg.checkpoint_every = 100;
        let (run, state, log) = new_run(&cfg, &dir).unwrap();
        train(&cfg, run, state, log, false).unwrap();
        let out = analyze(&["report", s(&dir), "-q", "--contexts", "5"]);
        assert!(out.status.success(), "{}", stderr(&out));
        dir
    })
}

fn texts(df: &DataFrame, name: &str) -> Vec<Option<String>> {
    let c = df.column(name).unwrap().cast(&DataType::String).unwrap();
    c.str()
        .unwrap()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

#[test]
fn the_report_of_a_real_run_has_one_trace_per_series_in_its_tables() {
    let run = real_run();
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    let figures = page_figures(&html);
    let table = |name: &str| read_parquet(&run.join(format!("analysis/{name}.parquet"))).unwrap();

    // Loss: training + eval loss of digit 1, and one marker trace if spikes were found.
    let spikes = table("spikes");
    let loss = figure(&figures, "loss");
    assert_eq!(
        traces(loss).len(),
        2 + usize::from(spikes.height() > 0),
        "loss traces"
    );
    assert_eq!(loss["layout"]["yaxis"]["type"], "log");

    // Carry kinds of the tens digit: none, direct and cascade all occur.
    let lt = table("loss");
    let (kind, metric, value) = (
        texts(&lt, "carry_kind"),
        texts(&lt, "metric"),
        lt.column("value").unwrap().f64().unwrap().clone(),
    );
    let kinds: BTreeSet<String> = (0..lt.height())
        .filter(|&i| metric[i].as_deref() == Some("accuracy"))
        .filter(|&i| kind[i].as_deref() != Some("all"))
        .filter(|&i| value.get(i).is_some_and(f64::is_finite))
        .filter_map(|i| kind[i].clone())
        .collect();
    // None and direct occur for the tens digit; a cascade into it cannot (digit 0 has no carry-in).
    assert!(
        kinds.contains("none") && kinds.contains("direct"),
        "{kinds:?}"
    );
    assert_eq!(
        traces(figure(&figures, "carry_kind_accuracy")).len(),
        kinds.len()
    );

    // Naive lens: one heatmap per carry-in present for the digit, 10 offsets x snapshots.
    let nl = table("naive_lens");
    let snapshots: BTreeSet<String> = texts(&nl, "batch").into_iter().flatten().collect();
    for carry in ["0", "1"] {
        let fig = figure(&figures, &format!("naive_lens_d1_carry{carry}"));
        assert_eq!(traces(fig).len(), 1);
        let z = traces(fig)[0]["z"].as_array().unwrap();
        assert_eq!(z.len(), 10);
        assert_eq!(z[0].as_array().unwrap().len(), snapshots.len());
    }
    assert_eq!(traces(figure(&figures, "pair_split_d1")).len(), 3);

    // Key frequencies: one trace per dominant frequency that occurs.
    let kf = table("key_frequencies");
    let freqs: BTreeSet<String> = texts(&kf, "frequency").into_iter().flatten().collect();
    assert_eq!(
        traces(figure(&figures, "key_frequencies_d1")).len(),
        freqs.len()
    );
    // Excluded loss: the eval loss plus excluded and restricted loss per frequency set.
    let el = table("excluded_loss");
    let sets: BTreeSet<String> = texts(&el, "frequencies").into_iter().flatten().collect();
    let fig = figure(&figures, "excluded_loss_d1");
    assert_eq!(traces(fig).len(), 1 + 2 * sets.len());
    assert_eq!(fig["layout"]["yaxis"]["type"], "log");

    // Norms: one trace per per-tensor column of the training log.
    let log = read_parquet(&run.join("train_log.parquet")).unwrap();
    let per_tensor = log
        .get_column_names()
        .iter()
        .filter(|n| n.starts_with("weight_norm/"))
        .count();
    assert_eq!(traces(figure(&figures, "weight_norms")).len(), per_tensor);

    // The header states the config and the phase figures in words.
    assert!(html.contains("d_model 16, 1 heads"));
    assert!(html.contains("Digit 1 (eval loss per snapshot)"));
    for f in &figures {
        check_png(&run.join(format!("figures/{}.png", f["id"].as_str().unwrap())));
    }
}

#[test]
fn a_killed_run_is_reported_with_what_was_written() {
    let dir = scratch("killed").join("run");
    copy_dir(real_run(), &dir);
    // As if `train --steps 1000` had been killed after batch 300.
    let config = dir.join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    cfg["steps"] = 1000.into();
    std::fs::write(&config, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let out = analyze(&["report", s(&dir), "-q", "--contexts", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("Training stopped at batch 300 of 1000"));
}

#[test]
fn nothing_to_show_exits_2_and_writes_no_report() {
    // A folder with no run.
    let empty = scratch("empty");
    let out = analyze(&["report", s(&empty), "-q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("holds no runs"), "{}", stderr(&out));
    assert!(!empty.join("report.html").exists());

    // A run with no snapshots, no log and no analyses (created, never trained), of either
    // task (a modular-addition run's analyses are `analyze grokking`'s).
    let digits = TaskConfig {
        n_digits: 2,
        layout: Layout::Prompt,
        targets: vec![0],
        modp: None,
    };
    for (name, task) in [
        ("fresh", digits),
        ("fresh-modp", TaskConfig::modp(23, 0.5, 50)),
    ] {
        let fresh = scratch(name).join("run");
        let cfg = serde_json::to_value(TrainConfig::default_for(task, 8, 1)).unwrap();
        digitlab_snapshots::RunDir::create(&fresh, &cfg).unwrap();
        let out = analyze(&["report", s(&fresh), "-q"]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(stderr(&out).contains("nothing to show"), "{}", stderr(&out));
        assert!(!fresh.join("report.html").exists(), "{name}");
        assert!(
            !fresh.join("figures").exists()
                || std::fs::read_dir(fresh.join("figures"))
                    .unwrap()
                    .next()
                    .is_none(),
            "{name}"
        );
    }

    // Not a folder at all.
    let out = analyze(&["report", s(&empty.join("missing")), "-q"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_sweep_with_a_failed_point_shows_its_runs_and_marks_the_failure() {
    let sweep = scratch("sweep");
    copy_dir(real_run(), &sweep.join("d16-s0"));
    copy_dir(real_run(), &sweep.join("d16-s1"));
    let mut status = DataFrame::new(
        3,
        vec![
            Column::new("point".into(), ["d16-s0", "d16-s1", "d32-s0"]),
            Column::new("state".into(), ["done", "done", "failed"]),
            Column::new("exit_status".into(), [Some(0i64), Some(0), Some(101)]),
            Column::new("error".into(), [None, None, Some("out of memory")]),
        ],
    )
    .unwrap();
    write_parquet_atomic(&sweep.join("sweep_status.parquet"), &mut status).unwrap();
    let out = analyze(&["report", s(&sweep), "-q", "--contexts", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let html = std::fs::read_to_string(sweep.join("report.html")).unwrap();
    assert!(html.contains("1 of 3 sweep points failed"));
    assert_eq!(html.matches("<tr class=\"failed\">").count(), 1);
    let figures = page_figures(&html);
    let overlay = figure(&figures, "sweep_loss");
    assert_eq!(traces(overlay).len(), 2, "one curve per run");
    assert_eq!(overlay["layout"]["yaxis"]["type"], "log");
    assert_eq!(traces(overlay)[0]["meta"]["d_model"], "16");
    // Both runs left ln 10 (or the figure says which did not): points + median per head count.
    // These 300-batch runs may not leave ln 10 yet: then the figure is left out and the page
    // names the runs.
    match figures.iter().find(|f| f["id"] == "leaves_ln10") {
        Some(leaves) => {
            assert_eq!(traces(leaves).len(), 2);
            assert_eq!(leaves["layout"]["xaxis"]["type"], "log");
            assert_eq!(leaves["layout"]["yaxis"]["type"], "log");
        }
        None => assert!(html.contains("2 run(s) not on the ln 10 figure (never seen leaving ln 10: started below it or still on it): d16-s0 (digit 1), d16-s1 (digit 1).")),
    }
    // Identical runs: no option varies, so no heatmap, and the page says why.
    assert!(html.contains("No final-loss heatmap"));
    for f in &figures {
        check_png(&sweep.join(format!("figures/{}.png", f["id"].as_str().unwrap())));
    }
}

// ---------------------------------------------------------------------------------------------
// A real short modular-addition run, analysed (`analyze grokking`) and reported by the binary
// ---------------------------------------------------------------------------------------------

/// `(batch, value)` of one metric of `grokking.parquet`, by a plain loop over its rows.
fn grokking_rows(table: &DataFrame, metric: &str) -> Vec<(f64, f64)> {
    let metrics = texts(table, "metric");
    let batch = table.column("batch").unwrap().i64().unwrap();
    let value = table.column("value").unwrap().f64().unwrap();
    let mut rows = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        if m.as_deref() == Some(metric) {
            rows.push((batch.get(i).unwrap() as f64, value.get(i).unwrap()));
        }
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    rows
}

#[test]
fn the_report_of_a_modp_run_draws_grokking_parquet_with_its_phases() {
    digitlab::threads::set_threads(1);
    let dir = scratch("modp").join("m23");
    let mut cfg = TrainConfig::default_for(TaskConfig::modp(23, 0.5, 50), 32, 4);
    (cfg.steps, cfg.snapshot_every, cfg.checkpoint_every) = (300, 50, 100);
    let (run, state, log) = new_run(&cfg, &dir).unwrap();
    train(&cfg, run, state, log, false).unwrap();
    // `analyze report` runs `analyze grokking` first, as it runs the digit analyses.
    let out = analyze(&["report", s(&dir), "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let figures = page_figures(&html);
    let table = |name: &str| read_parquet(&dir.join(format!("analysis/{name}.parquet"))).unwrap();
    let grokking = table("grokking");

    // The losses: one trace per loss metric, every snapshot with a positive loss, on a log axis.
    let losses = figure(&figures, "grokking");
    assert_eq!(losses["layout"]["yaxis"]["type"], "log");
    let names: Vec<&str> = traces(losses)
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "train loss",
            "test loss",
            "excluded loss (train set)",
            "restricted loss (all pairs)"
        ]
    );
    for (trace, metric) in traces(losses).iter().zip([
        "train_loss",
        "test_loss",
        "excluded_loss",
        "restricted_loss",
    ]) {
        let want: Vec<(f64, f64)> = grokking_rows(&grokking, metric)
            .into_iter()
            .filter(|(_, v)| *v > 0.0)
            .collect();
        assert_eq!(want.len(), 7, "{metric}: snapshots 0, 50, ..., 300");
        let got: Vec<(f64, f64)> = numbers(&trace["x"])
            .into_iter()
            .zip(numbers(&trace["y"]))
            .collect();
        assert_eq!(got.len(), want.len(), "{metric}");
        for ((gb, gv), (wb, wv)) in got.iter().zip(&want) {
            assert_eq!(gb, wb, "{metric}");
            assert!(
                (gv - wv).abs() <= 1e-6 * wv.abs(),
                "{metric} at {wb}: {gv} vs {wv}"
            );
        }
    }
    // The Gini coefficient and the sum of squared weights, one trace each, on linear axes.
    for metric in ["embedding_gini", "sum_squared_weights"] {
        let fig = figure(&figures, metric);
        assert_eq!(fig["layout"]["yaxis"]["type"], "-", "{metric}");
        assert_eq!(traces(fig).len(), 1, "{metric}");
        let want = grokking_rows(&grokking, metric);
        assert_eq!(numbers(&traces(fig)[0]["y"]).len(), want.len(), "{metric}");
        let first = numbers(&traces(fig)[0]["y"])[0];
        assert!(
            (first - want[0].1).abs() <= 1e-6 * want[0].1.abs(),
            "{metric}"
        );
    }

    // The phases shaded as the table of `analyze grokking` dates them: one band per started
    // phase, an unfinished one running to the last snapshot.
    let phases = table("grokking_phases");
    let start = phases.column("start_batch").unwrap().i64().unwrap().clone();
    let end = phases.column("end_batch").unwrap().i64().unwrap().clone();
    let last = phases.column("last_batch").unwrap().i64().unwrap().clone();
    let mut want_bands = Vec::new();
    for i in 0..phases.height() {
        if let Some(from) = start.get(i) {
            want_bands.push((
                from as f64,
                end.get(i).unwrap_or(last.get(i).unwrap()) as f64,
            ));
        }
    }
    for id in ["grokking", "embedding_gini", "sum_squared_weights"] {
        let bands: Vec<(f64, f64)> = figure(&figures, id)["layout"]["shapes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["type"] == "rect")
            .map(|s| (s["x0"].as_f64().unwrap(), s["x1"].as_f64().unwrap()))
            .collect();
        assert_eq!(bands, want_bands, "{id}");
    }
    assert!(
        !want_bands.is_empty(),
        "memorisation starts at the first snapshot"
    );

    // Key frequencies: one trace per dominant frequency of the neurons.
    let kf = table("key_frequencies");
    let freqs: BTreeSet<String> = texts(&kf, "frequency").into_iter().flatten().collect();
    let keys = figure(&figures, "key_frequencies_d0");
    assert_eq!(traces(keys).len(), freqs.len());
    assert!(keys["layout"]["title"]["text"]
        .as_str()
        .unwrap()
        .starts_with("Addition mod 23:"));

    // The header names the task and the phases in words; the digit tables are not asked for.
    assert!(html.contains("addition mod 23"), "task fact");
    assert!(html.contains("Phases: memorisation ends at"));
    assert!(!html.contains("loss.parquet does not exist"));
    assert!(!figures.iter().any(|f| f["id"] == "loss"));
    for f in &figures {
        check_png(&dir.join(format!("figures/{}.png", f["id"].as_str().unwrap())));
    }
}
