//! The terminal: raw mode and the alternate screen while the console runs, the original
//! terminal back afterwards — on a normal exit, on an error, and on a panic — and the thread
//! that reads keys.
//!
//! Invariant: every path out of the console goes through [`restore`] exactly as the shell
//! needs it (raw mode off, main screen back, cursor shown): [`Guard`] restores on drop and the
//! panic hook restores before the panic message is printed, so the message is readable.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyEvent};
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::crossterm::{cursor, execute};
use tokio::sync::mpsc;

/// Puts the terminal back the way the shell had it. Safe to call more than once.
pub fn restore() {
    let _ = disable_raw_mode();
    let mut out = std::io::stdout();
    let _ = execute!(out, LeaveAlternateScreen, cursor::Show);
    let _ = out.flush();
}

/// Owns the terminal's console mode; dropping it restores the terminal.
#[derive(Debug)]
pub struct Guard(());

impl Guard {
    /// Enters raw mode and the alternate screen, and makes panics restore the terminal.
    ///
    /// # Errors
    /// When stdout is not a terminal or the terminal refuses raw mode.
    pub fn enter() -> std::io::Result<Self> {
        install_panic_hook();
        enable_raw_mode()?;
        let guard = Self(());
        execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

/// Chains a hook that restores the terminal before the previous hook prints the panic.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// What the input thread reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A key was pressed.
    Key(KeyEvent),
    /// The terminal changed size.
    Resize,
    /// Reading the terminal failed; the console should stop.
    Failed(String),
}

/// How often the input thread checks whether it should stop.
const POLL: Duration = Duration::from_millis(100);

/// Reads terminal events on a thread of its own (the read blocks) into a bounded channel,
/// until `stop` is set or the channel closes.
pub fn spawn_input(
    tx: mpsc::Sender<Input>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hydrant-top-input".to_owned())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let input = match event::poll(POLL) {
                    Ok(false) => continue,
                    Ok(true) => match event::read() {
                        Ok(Event::Key(key)) => Input::Key(key),
                        Ok(Event::Resize(..)) => Input::Resize,
                        Ok(_) => continue,
                        Err(e) => Input::Failed(e.to_string()),
                    },
                    Err(e) => Input::Failed(e.to_string()),
                };
                let failed = matches!(input, Input::Failed(_));
                if tx.blocking_send(input).is_err() || failed {
                    return;
                }
            }
        })
}
