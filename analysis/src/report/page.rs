//! What a report page holds, before it becomes HTML: a title, facts about the run or sweep,
//! sentences on what is missing, and sections of figures.

use super::figure::Figure;

pub struct Page {
    pub title: String,
    /// Key facts (config values, parameter count) as (name, value) rows.
    pub facts: Vec<(String, String)>,
    /// Findings in words ("digit 0 leaves ln 10 at batch 300, reaches zero at 600").
    pub findings: Vec<String>,
    /// What the page cannot show and why (missing tables, a killed run, failed sweep points).
    pub missing: Vec<String>,
    pub sections: Vec<Section>,
    /// A table below the facts (the status of each point of a sweep): header and rows; rows
    /// whose last cell is `true` are marked as failed.
    pub table: Option<StatusTable>,
    /// Options the page offers to colour and group traces by (their `meta` keys); empty on a
    /// run page.
    pub selectable: Vec<String>,
}

pub struct Section {
    pub heading: String,
    pub figures: Vec<Figure>,
}

pub struct StatusTable {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Per row: did this point fail.
    pub failed: Vec<bool>,
}

impl Page {
    pub fn figures(&self) -> impl Iterator<Item = &Figure> {
        self.sections.iter().flat_map(|s| s.figures.iter())
    }
}
