//! `analyze report`: the pictures of a run or of a folder of runs. One self-contained,
//! interactive HTML page (`report.html`, plotly.js inlined once, works offline) and the same
//! figures as PNG and SVG (`figures/*.png`, `figures/*.svg`, drawn with plotters and a
//! bundled font).
//!
//! Figures are built from the Parquet tables only (plus the run's config for the header), so
//! anything the report shows can be recomputed from the tables by another tool. The figure
//! description (`figure`) knows no plotting library; `html` and `png` render it.
//!
//! Computing missing analyses is the caller's job (the `analyze` binary runs them first);
//! this module only reads.

pub mod downsample;
pub mod figure;
pub mod grokking_page;
pub mod html;
pub mod page;
pub mod png;
pub mod run_page;
pub mod sweep_page;
pub mod tables;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use digitlab_snapshots::write_atomic;
use rayon::prelude::*;

use page::Page;

/// Name of the page in the run or folder.
pub const REPORT_FILE: &str = "report.html";
/// Folder of the PNGs, beside the page.
pub const FIGURES_DIR: &str = "figures";

/// A run directory has a config.json; anything else is read as a folder of runs.
pub fn is_run(path: &Path) -> bool {
    path.join("config.json").is_file()
}

/// The page for `path`: a run's, or a folder's (sweep) page.
pub fn build_page(path: &Path) -> Result<Page> {
    if is_run(path) {
        run_page::run_page(&tables::RunTables::read(path)?)
    } else if path.is_dir() {
        sweep_page::sweep_page(path)
    } else {
        bail!(
            "{} is neither a run (a folder with config.json) nor a folder of runs",
            path.display()
        )
    }
}

/// What `write_report` wrote.
pub struct Written {
    pub html: PathBuf,
    pub html_bytes: usize,
    pub pngs: Vec<PathBuf>,
    pub svgs: Vec<PathBuf>,
    /// The page's "not shown" sentences, for the terminal too.
    pub missing: Vec<String>,
}

/// Builds the page and writes `report.html` and `figures/{id}.png` and `.svg` under `path`. Everything is
/// rendered in memory first and every file is written atomically, so a failure leaves the
/// previous report (or none), never half a file. Images of figures no longer in the report (a
/// spike that is gone) are removed.
pub fn write_report(path: &Path) -> Result<Written> {
    let page = build_page(path)?;
    let html = html::page_html(&page);
    let figures: Vec<&figure::Figure> = page.figures().collect();
    let images: Vec<(String, Vec<u8>, String)> = figures
        .par_iter()
        .map(|f| Ok((f.id.clone(), png::figure_png(f)?, png::figure_svg(f)?)))
        .collect::<Result<_>>()?;

    let dir = path.join(FIGURES_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let mut svgs = Vec::new();
    for (id, png, svg) in &images {
        let file = dir.join(format!("{id}.png"));
        write_atomic(&file, png)?;
        written.push(file);
        let file = dir.join(format!("{id}.svg"));
        write_atomic(&file, svg.as_bytes())?;
        svgs.push(file);
    }
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let p = entry.path();
        let ours = p.extension().is_some_and(|e| e == "png" || e == "svg");
        if ours && !written.contains(&p) && !svgs.contains(&p) {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    let html_path = path.join(REPORT_FILE);
    write_atomic(&html_path, html.as_bytes())?;
    Ok(Written {
        html: html_path,
        html_bytes: html.len(),
        pngs: written,
        svgs,
        missing: page.missing,
    })
}
