//! The app detail screen: summary, instances, request-rate and latency sparklines, autoscaler
//! and SLO status, recent events and the live log pane.
//!
//! Invariant: like every drawing function, it reads the view built at the last refresh and
//! writes only text that was cleaned when the view was built.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, Wrap};

use super::{log_lines, note_lines, style, widths};
use crate::state::State;
use crate::view::{AppDetail, INSTANCE_COLUMNS, Tone};

/// Draws the detail of the app on top of the stack.
pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, state: &State) {
    let Some(d) = &state.view().detail else {
        frame.render_widget(
            Paragraph::new("loading...").block(Block::bordered().title(" app ")),
            area,
        );
        return;
    };
    let instances = u16::try_from(d.instances.rows.len())
        .unwrap_or(u16::MAX)
        .clamp(1, 6)
        + 3;
    let [summary, table, sparks, status, logs] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(instances),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Min(3),
    ])
    .areas(area);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            ratatui::text::Span::styled(
                format!(" {} ", d.name),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            ratatui::text::Span::styled(d.summary.clone(), style(d.summary_tone)),
        ])),
        summary,
    );
    draw_instances(frame, table, d);
    draw_sparks(frame, sparks, d);
    draw_status(frame, status, d);
    draw_logs(frame, logs, d);
}

fn draw_instances(frame: &mut Frame<'_>, area: Rect, d: &AppDetail) {
    let block = Block::bordered().title(" instances ");
    if d.instances.rows.is_empty() {
        let note = d.instances.empty_note.clone().unwrap_or_default();
        frame.render_widget(
            Paragraph::new(Line::styled(note, style(Tone::Dim))).block(block),
            area,
        );
        return;
    }
    let header = Row::new(INSTANCE_COLUMNS.iter().map(|c| {
        let line = Line::from(c.title);
        Cell::from(if c.numeric {
            line.alignment(Alignment::Right)
        } else {
            line
        })
    }))
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = d.instances.rows.iter().map(|r| {
        Row::new(r.cells.iter().zip(INSTANCE_COLUMNS).map(|(cell, column)| {
            let line = Line::from(cell.text.as_str());
            Cell::from(if column.numeric {
                line.alignment(Alignment::Right)
            } else {
                line
            })
            .style(style(cell.tone))
        }))
    });
    let table = Table::new(rows, widths(INSTANCE_COLUMNS))
        .header(header)
        .column_spacing(1)
        .block(block);
    frame.render_widget(table, area);
}

fn draw_sparks(frame: &mut Frame<'_>, area: Rect, d: &AppDetail) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    // One bar a second, the newest at the right edge: as many seconds as fit.
    let newest = |data: &[u64], area: Rect| -> Vec<u64> {
        let fit = usize::from(area.width.saturating_sub(2));
        data[data.len().saturating_sub(fit)..].to_vec()
    };
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(" {} ", d.requests_title)))
            .data(newest(&d.requests, left))
            .style(Style::default().fg(Color::Green)),
        left,
    );
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(" {} ", d.latency_title)))
            .data(newest(&d.latency, right))
            .style(Style::default().fg(Color::Magenta)),
        right,
    );
}

fn draw_status(frame: &mut Frame<'_>, area: Rect, d: &AppDetail) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let status = note_lines(&d.status, None);
    frame.render_widget(
        Paragraph::new(status)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" autoscaler · SLOs ")),
        left,
    );
    let events = note_lines(&d.events, Some("no events"));
    frame.render_widget(
        Paragraph::new(events).block(Block::bordered().title(" recent events ")),
        right,
    );
}

fn draw_logs(frame: &mut Frame<'_>, area: Rect, d: &AppDetail) {
    let lines = log_lines(&d.logs, area.height, "no log lines yet");
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" logs (live) ")),
        area,
    );
}
