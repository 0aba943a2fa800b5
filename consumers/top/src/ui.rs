//! Drawing: one pure function of `&State` into a ratatui frame.
//!
//! Flow: the run loop (or a test's `TestBackend`) → [`draw`] → header and alert bar, the screen
//! on top of the stack (a table, or the app detail), the footer with the prompt or the key
//! hints, and the help over it all when open.
//!
//! Invariant: drawing never mutates the state and never puts outside text into a cell
//! unescaped: everything shown was cleaned when the view was built, and the few strings drawn
//! straight from the state (prompts, messages) go through [`crate::format::clean`] here.

mod detail;
mod service;

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};

use crate::format::{self, clean};
use crate::input::{KEYMAP, PROMPT_KEYS};
use crate::state::{Prompt, State};
use crate::view::{Level, LogOut, Note, Screen, TableKind, Tone};

/// The style of a tone.
#[must_use]
pub fn style(tone: Tone) -> Style {
    match tone {
        Tone::Normal => Style::default(),
        Tone::Dim => Style::default().fg(Color::DarkGray),
        Tone::Active => Style::default().fg(Color::Cyan),
        Tone::Warn => Style::default().fg(Color::Yellow),
        Tone::Alert => Style::default().fg(Color::Red),
    }
}

/// Status notes as lines, each in its tone; `empty` (dim), if given, when there are none.
fn note_lines<'a>(notes: &'a [Note], empty: Option<&'a str>) -> Vec<Line<'a>> {
    if let (true, Some(empty)) = (notes.is_empty(), empty) {
        return vec![Line::styled(empty, style(Tone::Dim))];
    }
    notes
        .iter()
        .map(|n| Line::styled(n.text.as_str(), style(n.tone)))
        .collect()
}

/// The newest log lines that fit a bordered pane `height` rows tall, stderr in red; `empty`
/// (dim) when there are none.
fn log_lines<'a>(logs: &'a [LogOut], height: u16, empty: &'a str) -> Vec<Line<'a>> {
    if logs.is_empty() {
        return vec![Line::styled(empty, style(Tone::Dim))];
    }
    let skip = logs
        .len()
        .saturating_sub(usize::from(height.saturating_sub(2)));
    logs[skip..]
        .iter()
        .map(|l| {
            let tone = if l.err { Tone::Alert } else { Tone::Normal };
            Line::styled(l.text.as_str(), style(tone))
        })
        .collect()
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, state: &State) {
    let area = frame.area();
    let alerts = state.view().header.alerts.len().clamp(1, 3) as u16;
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(1 + alerts),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, top, state);
    match state.screen() {
        Screen::App(_) => detail::draw(frame, body, state),
        Screen::Service(_) => service::draw(frame, body, state),
        screen => {
            if let Some(kind) = screen.table() {
                draw_table(frame, body, state, kind);
            }
        }
    }
    draw_footer(frame, bottom, state);
    if state.help_open() {
        draw_help(frame, area, state);
    }
}

/// How many table rows fit in a terminal of `height` lines (for page up/down).
#[must_use]
pub fn page_rows(height: u16) -> usize {
    usize::from(height.saturating_sub(7)).max(1)
}

fn draw_header(frame: &mut Frame<'_>, area: Rect, state: &State) {
    let h = &state.view().header;
    let mut spans = vec![
        Span::styled(
            " hydrant top ",
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("· {} · {} · ", clean(&h.mode), clean(&h.target))),
    ];
    let (up, wanted) = h.streams;
    let stream_tone = if wanted == 0 {
        Tone::Dim
    } else if up < wanted {
        Tone::Alert
    } else {
        Tone::Normal
    };
    spans.push(Span::styled(
        format!("streams {up}/{wanted}"),
        style(stream_tone),
    ));
    spans.push(Span::raw(format!(
        " · {} env/s · lost {} · ui drops {} · {}",
        format::number(h.envelopes_per_second),
        format::count(h.lost),
        format::count(h.ui_dropped),
        h.time,
    )));
    if let Some(note) = &h.api_note {
        spans.push(Span::raw(" · "));
        spans.push(Span::styled(clean(note).into_owned(), style(Tone::Warn)));
    }
    if state.paused() {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(
            " PAUSED ",
            Style::default()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    let mut lines = vec![Line::from(spans)];
    if h.alerts.is_empty() {
        lines.push(Line::styled(" no alerts", style(Tone::Dim)));
    }
    for (level, text) in h.alerts.iter().take(3) {
        lines.push(Line::styled(
            format!(" {}: {}", level.as_str(), clean(text)),
            style(level.tone()).add_modifier(if *level >= Level::Alert {
                Modifier::BOLD
            } else {
                Modifier::empty()
            }),
        ));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

fn draw_footer(frame: &mut Frame<'_>, area: Rect, state: &State) {
    let line = match state.prompt() {
        Prompt::Command(text) => Line::from(vec![
            Span::styled(":", Style::default().fg(Color::Cyan)),
            Span::raw(clean(text).into_owned()),
            Span::styled("█", Style::default().fg(Color::Cyan)),
        ]),
        Prompt::Filter(text) => Line::from(vec![
            Span::styled("/", Style::default().fg(Color::Cyan)),
            Span::raw(clean(text).into_owned()),
            Span::styled("█", Style::default().fg(Color::Cyan)),
        ]),
        Prompt::None => match state.message() {
            Some((level, text)) => Line::styled(clean(text).into_owned(), style(level.tone())),
            None => Line::styled(
                "<:>screen </>filter <enter>open <esc>back <s S r>sort <p>pause <?>help <q>quit",
                style(Tone::Dim),
            ),
        },
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// The block title of a table: name, counts, sort and filter.
fn table_title(state: &State, kind: TableKind) -> String {
    let ui = state.table_ui(kind);
    let total = state.view().table(kind).rows.len();
    let column = kind.columns().get(ui.sort_column).map_or("", |c| c.title);
    let mut title = format!(
        " {} ({}/{}) · sort {} {} ",
        kind.title(),
        ui.visible.len(),
        total,
        column,
        if ui.descending { "▼" } else { "▲" }
    );
    if let Some(f) = &ui.filter {
        title.push_str(&format!("· filter /{} ", clean(&f.raw)));
    }
    title
}

/// A table screen: header with the sort marker, rows filtered and sorted, the selection.
fn draw_table(frame: &mut Frame<'_>, area: Rect, state: &State, kind: TableKind) {
    let block = Block::bordered().title(table_title(state, kind));
    let table = state.view().table(kind);
    let ui = state.table_ui(kind);
    if ui.visible.is_empty() {
        let note = if table.rows.is_empty() {
            table.empty_note.clone().unwrap_or_default()
        } else {
            "no rows match the filter (esc clears it)".to_owned()
        };
        frame.render_widget(
            Paragraph::new(Line::styled(clean(&note).into_owned(), style(Tone::Dim)))
                .wrap(Wrap { trim: true })
                .block(block),
            area,
        );
        return;
    }
    let columns = kind.columns();
    let header = Row::new(columns.iter().enumerate().map(|(i, c)| {
        let mut title = c.title.to_owned();
        if i == ui.sort_column {
            title.push(if ui.descending { '▼' } else { '▲' });
        }
        let line = if c.numeric {
            Line::from(title).alignment(Alignment::Right)
        } else {
            Line::from(title)
        };
        Cell::from(line)
    }))
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = ui
        .visible
        .iter()
        .filter_map(|i| table.rows.get(*i))
        .map(|r| {
            let cells = r.cells.iter().zip(columns).map(|(cell, column)| {
                let line = if column.numeric {
                    Line::from(cell.text.as_str()).alignment(Alignment::Right)
                } else {
                    Line::from(cell.text.as_str())
                };
                Cell::from(line).style(style(cell.tone))
            });
            let row = Row::new(cells);
            if r.dim {
                row.style(style(Tone::Dim))
            } else {
                row
            }
        });
    let widths = widths(columns);
    let widget = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .block(block)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut table_state = TableState::default().with_selected(Some(ui.cursor));
    frame.render_stateful_widget(widget, area, &mut table_state);
}

/// Fixed widths (room for the title and the sort marker), but a text column at the end takes
/// what is left.
pub(crate) fn widths(columns: &[crate::view::Column]) -> Vec<Constraint> {
    let n = columns.len();
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let title = u16::try_from(c.title.chars().count()).unwrap_or(u16::MAX);
            let w = c.width.max(title.saturating_add(1));
            if i + 1 == n && !c.numeric {
                Constraint::Min(w)
            } else {
                Constraint::Length(w)
            }
        })
        .collect()
}

fn draw_help(frame: &mut Frame<'_>, area: Rect, state: &State) {
    let [_, middle, _] = Layout::vertical([
        Constraint::Percentage(5),
        Constraint::Percentage(90),
        Constraint::Percentage(5),
    ])
    .areas(area);
    let [_, popup, _] = Layout::horizontal([
        Constraint::Percentage(5),
        Constraint::Percentage(90),
        Constraint::Percentage(5),
    ])
    .areas(middle);
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut lines = vec![Line::styled("keys", bold)];
    for b in KEYMAP {
        lines.push(Line::from(vec![
            Span::styled(
                format!("  {:<14}", b.keys),
                Style::default().fg(Color::Cyan),
            ),
            Span::raw(b.help),
        ]));
    }
    lines.push(Line::styled("in the : and / prompts", bold));
    for (keys, help) in PROMPT_KEYS {
        lines.push(Line::from(vec![
            Span::styled(format!("  {keys:<14}"), Style::default().fg(Color::Cyan)),
            Span::raw(*help),
        ]));
    }
    let kind = match state.screen() {
        Screen::App(_) => None,
        Screen::Service(_) => Some(TableKind::Services),
        s => s.table(),
    };
    let (title, columns) = match kind {
        Some(k) => (k.title(), k.columns()),
        None => ("app instances", crate::view::INSTANCE_COLUMNS),
    };
    lines.push(Line::styled(format!("columns of {title}"), bold));
    for c in columns {
        lines.push(Line::from(vec![
            Span::styled(
                format!("  {:<14}", c.title),
                Style::default().fg(Color::Cyan),
            ),
            Span::raw(c.help),
        ]));
    }
    lines.push(Line::styled(
        "colours: yellow = warning threshold, red = alert threshold, cyan = recent traffic, \
         grey = stale or stopped",
        style(Tone::Dim),
    ));
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" help (esc or ? closes) ")),
        popup,
    );
}
