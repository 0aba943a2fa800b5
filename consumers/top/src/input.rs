//! Keys: the keymap as data (so `?` lists exactly what the keys do) and the mapping from a
//! terminal key event to an [`Action`].
//!
//! Flow: crossterm key events (read on their own thread) → [`action`] in normal mode, or the
//! line editor of the `:` and `/` prompts → `State::apply_key`.
//!
//! Invariant: every key the console reacts to in normal mode is in [`KEYMAP`], and nothing in
//! [`KEYMAP`] is unreachable: `action` is written against the same table the help shows.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// What a key asks for in normal mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave, restoring the terminal.
    Quit,
    /// Show or hide the help.
    Help,
    /// Open the `:` prompt.
    Command,
    /// Open the `/` filter prompt.
    Filter,
    /// Select the row above.
    Up,
    /// Select the row below.
    Down,
    /// A page up.
    PageUp,
    /// A page down.
    PageDown,
    /// The first row.
    Top,
    /// The last row.
    Bottom,
    /// Open the selected row.
    Enter,
    /// Close the prompt, the help, the filter, or go back a screen.
    Back,
    /// Freeze or unfreeze the display (data keeps being collected).
    Pause,
    /// Sort by the next column.
    SortNext,
    /// Sort by the previous column.
    SortPrev,
    /// Reverse the sort.
    SortReverse,
    /// Recompute the screen now.
    Refresh,
    /// Repaint the whole terminal.
    Repaint,
}

/// One line of the help: the keys and what they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The keys, as the help shows them.
    pub keys: &'static str,
    /// What they do.
    pub help: &'static str,
    /// The action (for the test that every binding is reachable).
    pub action: Action,
}

const fn bind(keys: &'static str, action: Action, help: &'static str) -> Binding {
    Binding { keys, help, action }
}

/// Every key in normal mode, in the order `?` lists them.
pub const KEYMAP: &[Binding] = &[
    bind(
        ":",
        Action::Command,
        "command: :apps :app NAME :pipeline :nodes :events :services :service NAME :help :quit",
    ),
    bind(
        "/",
        Action::Filter,
        "filter rows (case-insensitive text); /!text hides matching rows",
    ),
    bind(
        "enter",
        Action::Enter,
        "drill down: an app's detail (from apps or events), a service's (from services)",
    ),
    bind(
        "esc",
        Action::Back,
        "close prompt or help, clear the filter, or go back",
    ),
    bind("up/k down/j", Action::Down, "select a row"),
    bind("pgup pgdn", Action::PageDown, "a page up or down"),
    bind("g G home end", Action::Bottom, "first or last row"),
    bind("s >", Action::SortNext, "sort by the next column"),
    bind("S <", Action::SortPrev, "sort by the previous column"),
    bind("r", Action::SortReverse, "reverse the sort order"),
    bind(
        "p",
        Action::Pause,
        "pause the display (data keeps arriving)",
    ),
    bind("space", Action::Refresh, "refresh now"),
    bind("ctrl-l", Action::Repaint, "repaint the terminal"),
    bind("?", Action::Help, "this help"),
    bind("q ctrl-c", Action::Quit, "quit"),
];

/// Keys of the `:` and `/` prompts, for the help.
pub const PROMPT_KEYS: &[(&str, &str)] = &[
    ("enter", "run the command / apply the filter"),
    ("esc", "cancel"),
    ("backspace", "delete a character"),
    ("ctrl-u", "clear the line"),
];

/// The action of a key in normal mode; `None` for keys that do nothing.
#[must_use]
pub fn action(key: &KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    Some(match key.code {
        KeyCode::Char('c') if ctrl => Action::Quit,
        KeyCode::Char('l') if ctrl => Action::Repaint,
        _ if ctrl => return None,
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('?') => Action::Help,
        KeyCode::Char(':') => Action::Command,
        KeyCode::Char('/') => Action::Filter,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::Top,
        KeyCode::End | KeyCode::Char('G') => Action::Bottom,
        KeyCode::Enter => Action::Enter,
        KeyCode::Esc => Action::Back,
        KeyCode::Char('p') => Action::Pause,
        KeyCode::Char('s' | '>') => Action::SortNext,
        KeyCode::Char('S' | '<') => Action::SortPrev,
        KeyCode::Char('r') => Action::SortReverse,
        KeyCode::Char(' ') => Action::Refresh,
        _ => return None,
    })
}

/// What a key does to a prompt's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Keep editing.
    Continue,
    /// Run / apply the line.
    Submit,
    /// Drop the prompt.
    Cancel,
}

/// Most characters a prompt holds; more are ignored.
pub const MAX_PROMPT: usize = 200;

/// Applies one key to a prompt's line.
pub fn edit(line: &mut String, key: &KeyEvent) -> Edit {
    if key.kind == KeyEventKind::Release {
        return Edit::Continue;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Enter => Edit::Submit,
        KeyCode::Esc => Edit::Cancel,
        KeyCode::Char('c') if ctrl => Edit::Cancel,
        KeyCode::Char('u') if ctrl => {
            line.clear();
            Edit::Continue
        }
        KeyCode::Backspace => {
            line.pop();
            Edit::Continue
        }
        KeyCode::Char(c) if !ctrl && !c.is_control() && line.chars().count() < MAX_PROMPT => {
            line.push(c);
            Edit::Continue
        }
        _ => Edit::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn every_binding_is_reachable_from_a_key_it_names() {
        for b in KEYMAP {
            let first = b.keys.split(' ').next().unwrap();
            let event = match first {
                "enter" => key(KeyCode::Enter),
                "esc" => key(KeyCode::Esc),
                "up/k" => key(KeyCode::Up),
                "pgup" => key(KeyCode::PageUp),
                "space" => key(KeyCode::Char(' ')),
                "ctrl-l" => KeyEvent::new(KeyCode::Char('l'), KeyModifiers::CONTROL),
                k => key(KeyCode::Char(k.chars().next().unwrap())),
            };
            assert!(action(&event).is_some(), "{:?} does nothing", b.keys);
        }
        // The bindings that list pairs name their first key's action.
        assert_eq!(action(&key(KeyCode::Char('j'))), Some(Action::Down));
        assert_eq!(action(&key(KeyCode::Char('k'))), Some(Action::Up));
        assert_eq!(action(&key(KeyCode::PageUp)), Some(Action::PageUp));
        assert_eq!(action(&key(KeyCode::Char('g'))), Some(Action::Top));
        assert_eq!(
            action(&KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(action(&key(KeyCode::Char('x'))), None);
    }

    #[test]
    fn prompts_edit_and_refuse_control_characters() {
        let mut line = String::new();
        for c in "pipe".chars() {
            assert_eq!(edit(&mut line, &key(KeyCode::Char(c))), Edit::Continue);
        }
        edit(&mut line, &key(KeyCode::Backspace));
        assert_eq!(line, "pip");
        edit(&mut line, &key(KeyCode::Char('\u{1b}')));
        assert_eq!(line, "pip");
        assert_eq!(edit(&mut line, &key(KeyCode::Enter)), Edit::Submit);
        edit(
            &mut line,
            &KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL),
        );
        assert!(line.is_empty());
        assert_eq!(edit(&mut line, &key(KeyCode::Esc)), Edit::Cancel);
    }
}
