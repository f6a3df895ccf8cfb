//! Results for people (tables) and for programs (JSON).

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};

/// A table with a header row; columns after the first are right-aligned (numbers).
pub fn table<H, R, C>(header: H, rows: R) -> Table
where
    H: IntoIterator,
    H::Item: Into<Cell>,
    R: IntoIterator,
    R::Item: IntoIterator<Item = C>,
    C: Into<Cell>,
{
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    for row in rows {
        t.add_row(row);
    }
    for column in t.column_iter_mut().skip(1) {
        column.set_cell_alignment(CellAlignment::Right);
    }
    t
}
