//! Plain-text tables with aligned columns.

/// A table: a header row and data rows, every cell a string.
#[derive(Debug, Default)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub(crate) fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are empty, extra cells are kept.
    pub(crate) fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Renders with two spaces between columns, a dashed line under the header, no trailing spaces.
    pub(crate) fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |row: &[String]| {
            let mut s = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                s.push_str(cell);
                if i + 1 < columns {
                    s.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = line(&self.header);
        out.push('\n');
        let total: usize = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
        out.push_str(&"-".repeat(total.min(120)));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// `1.234s`, `2m05s`: a short duration for tables.
pub(crate) fn duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn columns_are_aligned() {
        let mut t = Table::new(["backend", "result", "time"]);
        t.row(["memory", "passed", "1.0s"]);
        t.row(["postgres", "SKIPPED (no server)", "-"]);
        let expected = "\
backend   result               time
-----------------------------------
memory    passed               1.0s
postgres  SKIPPED (no server)  -
";
        assert_eq!(t.render(), expected);
    }

    #[test]
    fn short_and_long_rows() {
        let mut t = Table::new(["a", "b"]);
        t.row(["x"]);
        t.row(["y", "z", "extra"]);
        let out = t.render();
        assert!(out.lines().all(|l| !l.ends_with(' ')));
        assert!(out.contains("extra"));
        assert_eq!(out.lines().count(), 4);
    }

    #[test]
    fn unicode_width_by_chars() {
        let mut t = Table::new(["k", "v"]);
        t.row(["ünï", "1"]);
        assert_eq!(t.render().lines().nth(2).unwrap(), "ünï  1");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(duration(Duration::from_secs(125)), "2m05s");
    }
}
