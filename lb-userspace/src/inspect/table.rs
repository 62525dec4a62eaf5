//! Plain-text tables for `lb stats` and `lb conns`: columns sized to their
//! content, ipvsadm-style, and the `addr:port` cells they show.

use std::{fmt::Write as _, io, net::IpAddr};

/// How a column is aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text to the left (padded on the right).
    Left,
    /// Text to the right (numbers).
    Right,
}

/// Column widths computed from content, for the aligned tables of
/// `lb stats` and `lb conns`: [`Columns::measure`] every row, then
/// [`Columns::write_row`] them. Nothing is buffered, so a table of a million
/// rows costs two formatting passes and no memory.
#[derive(Clone, Debug)]
pub struct Columns {
    widths: Vec<usize>,
    align: Vec<Align>,
}

impl Columns {
    /// Columns sized for `header`.
    pub fn new(header: &[(&str, Align)]) -> Self {
        Self {
            widths: header.iter().map(|(h, _)| h.chars().count()).collect(),
            align: header.iter().map(|&(_, a)| a).collect(),
        }
    }

    /// Widens the columns to fit `cells`.
    pub fn measure<S: AsRef<str>>(&mut self, cells: &[S]) {
        for (w, cell) in self.widths.iter_mut().zip(cells) {
            *w = (*w).max(cell.as_ref().chars().count());
        }
    }

    /// Writes one row, columns separated by two spaces, no trailing blanks.
    pub fn write_row<S: AsRef<str>>(
        &self,
        out: &mut impl io::Write,
        cells: &[S],
    ) -> io::Result<()> {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = self.widths.get(i).copied().unwrap_or(0);
            if i > 0 {
                line.push_str("  ");
            }
            let _ = match self.align.get(i).copied().unwrap_or(Align::Left) {
                Align::Left => write!(line, "{:<width$}", cell.as_ref()),
                Align::Right => write!(line, "{:>width$}", cell.as_ref()),
            };
        }
        writeln!(out, "{}", line.trim_end())
    }
}

/// Writes `header` and `rows` as an aligned table.
pub fn write_aligned(
    out: &mut impl io::Write,
    header: &[(&str, Align)],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let mut columns = Columns::new(header);
    for row in rows {
        columns.measure(row);
    }
    let names: Vec<&str> = header.iter().map(|(h, _)| *h).collect();
    columns.write_row(out, &names)?;
    for row in rows {
        columns.write_row(out, row)?;
    }
    Ok(())
}

/// `addr:port`, with brackets for IPv6.
pub fn endpoint(addr: IpAddr, port: impl std::fmt::Display) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}
