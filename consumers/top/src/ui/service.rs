//! The service screen: one instance's summary, its broker's gauges and its `SVC` log lines.
//!
//! Invariant: like every drawing function, it reads the view built at the last refresh and
//! writes only text that was cleaned when the view was built.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

use super::{log_lines, note_lines, style};
use crate::state::State;

/// Draws the service instance on top of the stack.
pub(super) fn draw(frame: &mut Frame<'_>, area: Rect, state: &State) {
    let Some(d) = &state.view().service else {
        frame.render_widget(
            Paragraph::new("loading...").block(Block::bordered().title(" service ")),
            area,
        );
        return;
    };
    let gauges = u16::try_from(d.gauges.len())
        .unwrap_or(u16::MAX)
        .clamp(1, 14)
        + 2;
    let [summary, metrics, logs] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(gauges),
        Constraint::Min(3),
    ])
    .areas(area);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(
                format!(" {} ", d.name),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::styled(d.summary.clone(), style(d.summary_tone)),
        ])),
        summary,
    );
    let lines = note_lines(&d.gauges, None);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" node (the broker's gauges, every 10 s) ")),
        metrics,
    );
    let shown = log_lines(
        &d.logs,
        logs.height,
        "no SVC lines yet (the node's own log lines arrive as they are written)",
    );
    frame.render_widget(
        Paragraph::new(shown).block(Block::bordered().title(" SVC lines (live) ")),
        logs,
    );
}
