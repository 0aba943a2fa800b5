//! The console's screen tests' shared rig: a pinned wall clock, a [`State`] fed a recording,
//! drawn into ratatui's `TestBackend`, and the readers that find text, columns and raw control
//! characters in the drawn cells; keys typed as a user would.
//!
//! Shared by `screens.rs` (apps, pipeline, nodes, events) and `services.rs` (the services
//! screens), so both read the screen the same way: one character per cell, numbers in
//! right-aligned columns read from the header's right edge.

use std::time::Instant;

use hydrant_envelope::v2;
use hydrant_firehose_client::Batch;
use hydrant_firehose_client::render::TimeZone;
use hydrant_top::view::Screen;
use hydrant_top::{Feed, State, StateConfig};
use proptest::prelude::*;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;

/// The wall clock when the recording ends: 2023-11-14T22:13:20Z.
pub const WALL: i64 = 1_700_000_000_000_000_000;
pub const SEC: i64 = 1_000_000_000;

/// A console in UTC at `WALL`, in `mode`, not yet fed anything.
pub fn fresh(t0: Instant, mode: &str) -> State {
    let config = StateConfig {
        tz: TimeZone::Utc,
        ..StateConfig::default()
    };
    State::new(config, t0, WALL, mode, "http://api").unwrap()
}

/// An operator's console fed `history` and then `feed` (the API's answer), refreshed at the end
/// of the recording.
pub fn recorded_with(history: &[v2::Envelope], feed: Feed) -> (State, Instant) {
    let t0 = Instant::now();
    let mut state = fresh(t0, "operator (firehose)");
    state.apply_feed(Feed::History(Batch::from_envelopes(history)), t0);
    state.apply_feed(feed, t0);
    state.tick(t0);
    (state, t0)
}

pub fn draw(state: &mut State, width: u16, height: u16) -> Buffer {
    let mut term = Terminal::new(TestBackend::new(width, height)).unwrap();
    hydrant_top::draw(&mut term, state).unwrap();
    term.backend().buffer().clone()
}

pub fn line(buf: &Buffer, y: u16) -> String {
    (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect()
}

pub fn screen(buf: &Buffer) -> String {
    (0..buf.area.height)
        .map(|y| line(buf, y))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where `text` starts (cell coordinates), matching one character per cell.
pub fn find(buf: &Buffer, text: &str) -> Option<(u16, u16)> {
    find_in(buf, text, |_| true)
}

/// Like [`find`], only in lines inside a bordered block (tables), not the header lines.
pub fn find_in_table(buf: &Buffer, text: &str) -> Option<(u16, u16)> {
    find_in(buf, text, |y| buf[(0, y)].symbol() == "│")
}

fn find_in(buf: &Buffer, text: &str, lines: impl Fn(u16) -> bool) -> Option<(u16, u16)> {
    let chars: Vec<char> = text.chars().collect();
    for y in (0..buf.area.height).filter(|y| lines(*y)) {
        for x in 0..buf.area.width {
            let fits = chars.iter().enumerate().all(|(i, c)| {
                let cx = x as usize + i;
                cx < buf.area.width as usize && buf[(cx as u16, y)].symbol() == c.to_string()
            });
            if fits {
                return Some((x, y));
            }
        }
    }
    None
}

#[track_caller]
pub fn must_find(buf: &Buffer, text: &str) -> (u16, u16) {
    find(buf, text).unwrap_or_else(|| panic!("{text:?} is not on screen:\n{}", screen(buf)))
}

/// The row of the table line that holds `text`.
#[track_caller]
pub fn row_of(buf: &Buffer, text: &str) -> String {
    line(buf, must_find(buf, text).1)
}

/// The text of a right-aligned numeric column in the row at `y`, read leftwards from the
/// column's right edge (the last character of its header).
pub fn column_text(buf: &Buffer, header: &str, y: u16) -> (String, Color) {
    let (hx, _) = find_in_table(buf, &format!(" {header}"))
        .unwrap_or_else(|| panic!("no column {header}:\n{}", screen(buf)));
    let right = hx + header.chars().count() as u16;
    let mut x = right;
    let mut text = String::new();
    while x > 0 && buf[(x, y)].symbol() != " " {
        text.insert_str(0, buf[(x, y)].symbol());
        x -= 1;
    }
    (text, buf[(right, y)].fg)
}

pub fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

/// Types `text` as keys: `\n` is Enter, `\u{1b}` is Esc.
pub fn type_keys(state: &mut State, text: &str, now: Instant) {
    for c in text.chars() {
        let code = match c {
            '\n' => KeyCode::Enter,
            '\u{1b}' => KeyCode::Esc,
            c => KeyCode::Char(c),
        };
        state.apply_key(&key(code), now);
    }
}

/// Types `keys` (as [`type_keys`] does) and checks that they lead to screen `to`.
#[track_caller]
pub fn keys_lead_to(state: &mut State, keys: &str, now: Instant, to: &Screen) {
    type_keys(state, keys, now);
    assert_eq!(state.screen(), to, "after typing {keys:?}");
}

/// The console's message line says `needle`.
#[track_caller]
pub fn assert_message(state: &State, needle: &str) {
    let message = state.message().map(|(_, text)| text.as_str());
    assert!(
        message.is_some_and(|m| m.contains(needle)),
        "the message line should say {needle:?}: {message:?}"
    );
}

/// No cell holds a character a terminal would obey rather than show.
pub fn assert_no_control(buf: &Buffer) {
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            for c in buf[(x, y)].symbol().chars() {
                assert!(
                    !(c.is_control()
                        || ('\u{80}'..='\u{9f}').contains(&c)
                        || matches!(
                            c,
                            '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}'
                                | '\u{2066}'..='\u{2069}'
                        )),
                    "raw {c:?} at ({x}, {y})"
                );
            }
        }
    }
}

/// Arbitrary bytes, as a hostile payload or tag.
pub fn hostile_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// A name ending in characters a terminal would obey: C0, DEL, C1 and a bidi override.
pub const HOSTILE_NAME: &str = "\\PC{0,12}[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{202e}]{1,3}";
