//! How keys change the state: prompts, screens, selection, filters, sorting, pause.
//!
//! Invariant: the selection is kept by row key, so re-sorting or new rows never move it to
//! another app under the operator's cursor; the screen stack stays short (a screen already on
//! it is returned to rather than pushed again).

use std::cmp::Ordering;
use std::time::Instant;

use ratatui::crossterm::event::KeyEvent;

use super::{Filter, Prompt, State};
use crate::input::{self, Action, Edit};
use crate::view::{Level, Screen, TableKind};

/// Longest screen history kept.
const MAX_STACK: usize = 8;

/// What the run loop must do after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Redraw as usual.
    Redraw,
    /// Clear the terminal and redraw every cell.
    Repaint,
    /// Leave.
    Quit,
}

impl State {
    /// Applies one key at `now`.
    pub fn apply_key(&mut self, key: &KeyEvent, now: Instant) -> Effect {
        match std::mem::take(&mut self.ui.prompt) {
            Prompt::Command(mut line) => {
                match input::edit(&mut line, key) {
                    Edit::Continue => self.ui.prompt = Prompt::Command(line),
                    Edit::Cancel => {}
                    Edit::Submit => self.run_command(&line, now),
                }
                return self.effect();
            }
            Prompt::Filter(mut line) => {
                match input::edit(&mut line, key) {
                    Edit::Continue => self.ui.prompt = Prompt::Filter(line),
                    Edit::Cancel => {}
                    Edit::Submit => self.filter_current(&line),
                }
                return self.effect();
            }
            Prompt::None => {}
        }
        let Some(action) = input::action(key) else {
            return Effect::Redraw;
        };
        if self.ui.help && !matches!(action, Action::Help | Action::Back | Action::Quit) {
            // The help covers the screen; keys underneath would act unseen.
            return Effect::Redraw;
        }
        self.ui.message = None;
        match action {
            Action::Quit => self.ui.quit = true,
            Action::Help => self.ui.help = !self.ui.help,
            Action::Command => self.ui.prompt = Prompt::Command(String::new()),
            Action::Filter => {
                let current = self
                    .current_table()
                    .and_then(|k| self.ui.tables[k.index()].filter.as_ref())
                    .map(|f| f.raw.clone())
                    .unwrap_or_default();
                self.ui.prompt = Prompt::Filter(current);
            }
            Action::Up => self.move_cursor(-1),
            Action::Down => self.move_cursor(1),
            Action::PageUp => self.move_cursor(-(self.ui.page as i64)),
            Action::PageDown => self.move_cursor(self.ui.page as i64),
            Action::Top => self.move_cursor(i64::MIN / 2),
            Action::Bottom => self.move_cursor(i64::MAX / 2),
            Action::Enter => self.enter(now),
            Action::Back => self.back(now),
            Action::Pause => {
                self.ui.paused = !self.ui.paused;
                if !self.ui.paused {
                    self.rebuild(now);
                }
            }
            Action::SortNext => self.sort_step(1),
            Action::SortPrev => self.sort_step(-1),
            Action::SortReverse => {
                if let Some(kind) = self.current_table() {
                    let t = &mut self.ui.tables[kind.index()];
                    t.descending = !t.descending;
                    self.relayout(kind);
                }
            }
            Action::Refresh => self.rebuild(now),
            Action::Repaint => return Effect::Repaint,
        }
        self.effect()
    }

    fn effect(&self) -> Effect {
        if self.ui.quit {
            Effect::Quit
        } else {
            Effect::Redraw
        }
    }

    /// The table on screen, when a table screen is on top.
    pub(crate) fn current_table(&self) -> Option<TableKind> {
        self.screen().table()
    }

    fn run_command(&mut self, line: &str, now: Instant) {
        let mut words = line.split_whitespace();
        let Some(command) = words.next() else {
            return;
        };
        let rest: Vec<&str> = words.collect();
        let screen = match command.to_ascii_lowercase().as_str() {
            "apps" | "a" | "app" if rest.is_empty() => Screen::Apps,
            "app" | "a" => {
                let name = rest.join(" ");
                match self.find_app(&name) {
                    Some(guid) => Screen::App(guid.into()),
                    None => {
                        let shown = crate::format::clean(&name).into_owned();
                        self.ui.message = Some((Level::Warn, format!("no app called {shown}")));
                        return;
                    }
                }
            }
            "pipeline" | "pipe" | "pl" => Screen::Pipeline,
            "nodes" | "node" | "no" | "executors" | "executor" | "cells" => Screen::Nodes,
            "events" | "event" | "ev" | "alerts" | "alert" => Screen::Events,
            "services" | "svc" | "service" | "sv" if rest.is_empty() => Screen::Services,
            "service" | "svc" | "sv" => {
                let name = rest.join(" ");
                match self.services.find(&name) {
                    Some(guid) => Screen::Service(guid.into()),
                    None => {
                        let shown = crate::format::clean(&name).into_owned();
                        self.ui.message =
                            Some((Level::Warn, format!("no service instance called {shown}")));
                        return;
                    }
                }
            }
            "help" | "h" | "?" => {
                self.ui.help = true;
                return;
            }
            "quit" | "q" | "q!" | "exit" => {
                self.ui.quit = true;
                return;
            }
            other => {
                let shown = crate::format::clean(other).into_owned();
                self.ui.message = Some((
                    Level::Warn,
                    format!(
                        "unknown command :{shown} (try :apps :pipeline :nodes :events :services)"
                    ),
                ));
                return;
            }
        };
        self.open(screen, now);
    }

    /// Shows `screen`, returning to it if it is already on the stack.
    pub(crate) fn open(&mut self, screen: Screen, now: Instant) {
        if let Some(at) = self.ui.stack.iter().position(|s| *s == screen) {
            self.ui.stack.truncate(at + 1);
        } else {
            if self.ui.stack.len() >= MAX_STACK {
                self.ui.stack.remove(0);
            }
            self.ui.stack.push(screen);
        }
        self.ui.help = false;
        // A new screen shows current data even while paused: the freeze is of numbers, not
        // of navigation.
        self.rebuild(now);
    }

    fn enter(&mut self, now: Instant) {
        let Some(kind) = self.current_table() else {
            return;
        };
        let Some(key) = self.ui.tables[kind.index()].selected.clone() else {
            return;
        };
        match kind {
            TableKind::Apps => self.open(Screen::App(key.into()), now),
            TableKind::Services => self.open(Screen::Service(key.into()), now),
            TableKind::Events => {
                let source = self
                    .view()
                    .table(TableKind::Events)
                    .rows
                    .iter()
                    .find(|r| r.key == key)
                    .and_then(|r| r.link.clone());
                match source.and_then(|s| self.find_app(&s)) {
                    Some(guid) => self.open(Screen::App(guid.into()), now),
                    None => {
                        self.ui.message =
                            Some((Level::Info, "this event is not about an app".to_owned()));
                    }
                }
            }
            TableKind::Pipeline | TableKind::Nodes => {
                self.ui.message = Some((
                    Level::Info,
                    "no detail view for this row; :apps lists apps".to_owned(),
                ));
            }
        }
    }

    fn back(&mut self, now: Instant) {
        if self.ui.help {
            self.ui.help = false;
            return;
        }
        if let Some(kind) = self.current_table()
            && self.ui.tables[kind.index()].filter.is_some()
        {
            self.ui.tables[kind.index()].filter = None;
            self.relayout(kind);
            return;
        }
        if self.ui.stack.len() > 1 {
            self.ui.stack.pop();
            self.rebuild(now);
        }
    }

    fn filter_current(&mut self, line: &str) {
        if let Some(kind) = self.current_table() {
            self.set_filter(kind, line);
        }
    }

    /// Sets a table's filter as if typed after `/` (empty clears it).
    pub fn set_filter(&mut self, kind: TableKind, line: &str) {
        self.ui.tables[kind.index()].filter = Filter::parse(line);
        self.relayout(kind);
    }

    fn sort_step(&mut self, step: i64) {
        let Some(kind) = self.current_table() else {
            return;
        };
        let n = kind.columns().len() as i64;
        let t = &mut self.ui.tables[kind.index()];
        t.sort_column = usize::try_from((t.sort_column as i64 + step).rem_euclid(n)).unwrap_or(0);
        // Numbers read best biggest first, names alphabetically.
        t.descending = kind.columns()[t.sort_column].numeric;
        self.relayout(kind);
    }

    fn move_cursor(&mut self, by: i64) {
        let Some(kind) = self.current_table() else {
            return;
        };
        let rows = &self.view.tables[kind.index()].rows;
        let t = &mut self.ui.tables[kind.index()];
        if t.visible.is_empty() {
            t.cursor = 0;
            t.selected = None;
            return;
        }
        let last = t.visible.len() as i64 - 1;
        let cursor = (t.cursor as i64).saturating_add(by).clamp(0, last);
        t.cursor = usize::try_from(cursor).unwrap_or(0);
        t.selected = t
            .visible
            .get(t.cursor)
            .and_then(|i| rows.get(*i))
            .map(|r| r.key.clone());
    }

    /// Filters and sorts a table's rows and puts the cursor back on the selected row.
    pub(crate) fn relayout(&mut self, kind: TableKind) {
        let table = &self.view.tables[kind.index()];
        let t = &mut self.ui.tables[kind.index()];
        let column = t.sort_column.min(kind.columns().len().saturating_sub(1));
        let numeric = kind.columns().get(column).is_some_and(|c| c.numeric);
        let mut visible: Vec<usize> = (0..table.rows.len())
            .filter(|i| {
                t.filter
                    .as_ref()
                    .is_none_or(|f| f.keeps(table.rows[*i].cells.iter().map(|c| c.text.as_str())))
            })
            .collect();
        let descending = t.descending;
        visible.sort_by(|a, b| {
            let (ra, rb) = (&table.rows[*a], &table.rows[*b]);
            let (ca, cb) = (ra.cells.get(column), rb.cells.get(column));
            let order = if numeric {
                let (va, vb) = (ca.and_then(|c| c.value), cb.and_then(|c| c.value));
                match (va, vb) {
                    // Rows without a value go last whichever way the column sorts.
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => return Ordering::Greater,
                    (Some(_), None) => return Ordering::Less,
                    (Some(x), Some(y)) => x.total_cmp(&y),
                }
            } else {
                let ta = ca.map_or("", |c| c.text.as_str());
                let tb = cb.map_or("", |c| c.text.as_str());
                ta.to_lowercase().cmp(&tb.to_lowercase())
            };
            let order = if descending { order.reverse() } else { order };
            // Ties keep a stable, readable order: by the first column, then the key.
            order
                .then_with(|| {
                    let na = ra.cells.first().map_or("", |c| c.text.as_str());
                    let nb = rb.cells.first().map_or("", |c| c.text.as_str());
                    na.cmp(nb)
                })
                .then_with(|| ra.key.cmp(&rb.key))
        });
        t.cursor = match t
            .selected
            .as_ref()
            .and_then(|key| visible.iter().position(|i| table.rows[*i].key == *key))
        {
            Some(p) => p,
            None => t.cursor.min(visible.len().saturating_sub(1)),
        };
        t.selected = visible
            .get(t.cursor)
            .and_then(|i| table.rows.get(*i))
            .map(|r| r.key.clone());
        t.visible = visible;
    }
}
