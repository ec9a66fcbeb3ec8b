//! The scorecard: one row per fault, with the figure measured, the bar it is
//! held to, and PASS or FAIL.

use std::fmt::Write as _;

/// One measured line of the card.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The row number and a letter for a sub-case (`3a`).
    pub(crate) id: String,
    pub(crate) fault: String,
    pub(crate) figure: String,
    pub(crate) bar: String,
    pub(crate) pass: bool,
}

impl Row {
    pub(crate) fn new(
        id: &str,
        fault: impl Into<String>,
        figure: impl Into<String>,
        bar: impl Into<String>,
        pass: bool,
    ) -> Self {
        Self {
            id: id.to_owned(),
            fault: fault.into(),
            figure: figure.into(),
            bar: bar.into(),
            pass,
        }
    }

    /// A row whose run itself failed (a dependency would not start, a setup
    /// call failed): FAIL with what went wrong, never silently left out.
    pub(crate) fn broken(id: &str, fault: &str, error: &anyhow::Error) -> Self {
        Self::new(
            id,
            fault,
            format!("run failed: {error:#}"),
            "the run completes",
            false,
        )
    }
}

/// The card as text: a header, one block per row, a total.
pub(crate) fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n=== fault scorecard ===");
    for row in rows {
        let verdict = if row.pass { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "{verdict}  {:<4} {}", row.id, row.fault);
        let _ = writeln!(out, "            measured: {}", row.figure);
        let _ = writeln!(out, "            bar:      {}", row.bar);
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    let _ = writeln!(
        out,
        "=== {} rows: {} pass, {} fail ===",
        rows.len(),
        rows.len() - failed,
        failed
    );
    out
}
