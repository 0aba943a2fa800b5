//! Rolling windows over the firehose: the envelope stream folded into per-app, per-instance
//! windows that the platform's control loops (health manager, autoscaler, SLO alerts) and its
//! screens (terminal console, web dashboard) read.
//!
//! Flow: firehose edge → [`hydrant_firehose_client::FirehoseClient`] → [`drive`] (applies every
//! batch, turns gaps into counted loss) → [`Windows`] behind a mutex → readers via
//! [`Windows::app`]: requests/s, status classes with router-made errors apart, latency
//! quantiles, container and custom gauges, log lines/s, crashes, and per-minute SLO counts.
//!
//! # Layout
//! - [`Windows`] / [`WindowsConfig`]: the state, what it keeps and its caps.
//! - [`AppWindows`] / [`InstanceWindows`]: the readers and their results ([`Rate`],
//!   [`StatusClasses`], [`Latency`], [`GaugeStat`], [`LogRate`]).
//! - [`MinuteCounts`]: the SLO alerter's long-window unit, compact and serialisable.
//! - [`drive`]: the async loop from a firehose stream into shared windows.
//!
//! Invariants this crate keeps: time is injected (`now: Instant` on every method; only
//! [`Windows::new`] and [`drive`] read a clock), memory is bounded by the config's caps with
//! every refusal counted by reason, every series knows when it was last updated so "no data"
//! is never read as zero, and no input panics.

mod config;
mod drive;
mod error;
mod minutes;
mod ring;
mod state;
mod view;
mod windows;

pub use config::WindowsConfig;
pub use drive::{DriveStatus, SharedWindows, drive, drive_stream};
pub use error::Error;
pub use minutes::{LATENCY_BOUNDS_MS, MinuteCounts};
pub use view::{AppWindows, GaugeStat, InstanceWindows, Latency, LogRate, Rate, StatusClasses};
pub use windows::{DropReason, Footprint, OTHER_REASON, Windows, WindowsStats};
