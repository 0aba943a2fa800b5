//! What the screens show, computed: the snapshot [`crate::State`] rebuilds on every refresh
//! and the drawing code reads.
//!
//! Flow: `State::tick` → [`View`] (tables of already-formatted [`CellOut`]s, the app detail,
//! the header) → `ui::draw(&State)`. Sorting and filtering work on these cells, so every column
//! can be sorted and every row filtered the same way, whatever the screen.
//!
//! Invariant: a [`View`] is a pure function of the state at one instant; while the console is
//! paused it is simply not rebuilt, so the screen holds still while data keeps arriving.

use std::time::Instant;

/// The screens, as `:` names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Screen {
    /// Every app, one row each.
    Apps,
    /// One app (by guid): instances, sparklines, events, autoscaler and SLO status, logs.
    App(Box<str>),
    /// The pipeline watching itself: agents, dopplers, log caches, traffic controllers, nozzles.
    Pipeline,
    /// Executors (the nodes apps run on): capacity and instances.
    Nodes,
    /// Platform events and alerts, newest first.
    Events,
    /// Every service instance: offering, plan, state and its node's gauges.
    Services,
    /// One service instance (by guid): its gauges and `SVC` lines.
    Service(Box<str>),
}

impl Screen {
    /// The table this screen shows, when it is a table screen.
    #[must_use]
    pub fn table(&self) -> Option<TableKind> {
        match self {
            Screen::Apps => Some(TableKind::Apps),
            Screen::Pipeline => Some(TableKind::Pipeline),
            Screen::Nodes => Some(TableKind::Nodes),
            Screen::Events => Some(TableKind::Events),
            Screen::Services => Some(TableKind::Services),
            Screen::App(_) | Screen::Service(_) => None,
        }
    }
}

/// The table screens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// `:apps`.
    Apps,
    /// `:pipeline`.
    Pipeline,
    /// `:nodes`.
    Nodes,
    /// `:events`.
    Events,
    /// `:services`.
    Services,
}

impl TableKind {
    /// Every table, in the order of [`View::tables`].
    pub const ALL: [TableKind; 5] = [
        TableKind::Apps,
        TableKind::Pipeline,
        TableKind::Nodes,
        TableKind::Events,
        TableKind::Services,
    ];

    /// Position in [`View::tables`].
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The title shown above the table.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            TableKind::Apps => "apps",
            TableKind::Pipeline => "pipeline",
            TableKind::Nodes => "nodes",
            TableKind::Events => "events",
            TableKind::Services => "services",
        }
    }

    /// The columns of the table.
    #[must_use]
    pub const fn columns(self) -> &'static [Column] {
        match self {
            TableKind::Apps => APP_COLUMNS,
            TableKind::Pipeline => PIPELINE_COLUMNS,
            TableKind::Nodes => NODE_COLUMNS,
            TableKind::Events => EVENT_COLUMNS,
            TableKind::Services => crate::services::SERVICE_COLUMNS,
        }
    }

    /// The sort a table starts with: (column, descending).
    #[must_use]
    pub const fn default_sort(self) -> (usize, bool) {
        match self {
            // Busiest first, like cf top's REQ/60.
            TableKind::Apps => (APP_REQ60, true),
            TableKind::Pipeline => (0, false),
            TableKind::Nodes => (0, false),
            TableKind::Services => (0, false),
            // Newest first.
            TableKind::Events => (0, true),
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The header.
    pub title: &'static str,
    /// Width in cells (the last column takes what is left).
    pub width: u16,
    /// Numbers: right-aligned and sorted by value.
    pub numeric: bool,
    /// What it means, for `?`.
    pub help: &'static str,
}

impl Column {
    /// A text column: left-aligned, sorted as text.
    #[must_use]
    pub const fn text(title: &'static str, width: u16, help: &'static str) -> Self {
        Self {
            title,
            width,
            numeric: false,
            help,
        }
    }

    /// A number column: right-aligned, sorted by value.
    #[must_use]
    pub const fn num(title: &'static str, width: u16, help: &'static str) -> Self {
        Self {
            numeric: true,
            ..Self::text(title, width, help)
        }
    }
}

/// A table's columns, one line each (`text` or `num`, header, width, help): a table reads
/// best as one, so this keeps rustfmt from spreading a long help over four lines.
macro_rules! columns {
    ($($kind:ident $title:literal $width:literal $help:literal),* $(,)?) => {
        &[$($crate::view::Column::$kind($title, $width, $help)),*]
    };
}
pub(crate) use columns;

/// Index of `REQ/60` in [`APP_COLUMNS`].
pub const APP_REQ60: usize = 7;

/// The apps screen (cf top's App Stats, plus latency quantiles and the SLO budget).
pub const APP_COLUMNS: &[Column] = columns![
    text "NAME" 16 "app name (red: fewer instances running than desired; cyan: served HTTP in the last 10 s)",
    text "STATE" 7 "desired state from the API",
    text "INST" 5 "instances running/desired",
    num "CPU%" 5 "CPU of all instances, % of one core",
    num "MEM" 6 "memory of all instances (yellow >= 80 %, red >= 90 % of quota)",
    num "REQ/1" 6 "requests per second over 1 s",
    num "REQ/10" 6 "requests per second over 10 s",
    num "REQ/60" 6 "requests per second over 60 s",
    num "P50" 6 "median latency over 10 s",
    num "P95" 6 "95th percentile latency over 10 s",
    num "P99" 6 "99th percentile latency over 10 s (yellow >= 500 ms, red >= 1 s)",
    num "2XX" 4 "2xx responses in the last 60 s",
    num "3XX" 4 "3xx responses in the last 60 s",
    num "4XX" 4 "4xx responses in the last 60 s",
    num "5XX" 4 "5xx responses in the last 60 s (yellow >= 1 %, red >= 5 % of all)",
    num "LOG/S" 5 "app log lines per second over 10 s",
    num "CRSH" 4 "crashes in the last 5 minutes",
    num "SLO" 5 "error budget left, lowest of the app's SLOs (yellow < 50 %, red < 25 %)",
];

/// The pipeline screen: every hop of the pipeline from its own metric envelopes.
pub const PIPELINE_COLUMNS: &[Column] = columns![
    text "KIND" 17 "agent, doppler, logcache, trafficcontroller or nozzle",
    text "SOURCE" 18 "the component's source id",
    text "INSTANCE" 10 "which copy of the component",
    num "IN/S" 7 "envelopes received per second",
    num "OUT/S" 7 "envelopes sent on per second",
    num "DROP/S" 6 "envelopes dropped per second (yellow > 0, red >= 1 % of IN/S)",
    num "DROPPED" 7 "envelopes dropped since the component started",
    num "QUEUE" 6 "envelopes waiting (log cache: envelopes held)",
    num "CONS" 4 "consumers: subscriptions, streams or doppler connections",
    num "SLOW" 4 "consumers closed for falling behind (red > 0)",
    num "AGE" 4 "seconds since the component last reported (dim when stale)",
    text "DROPS BY REASON" 30 "dropped since start, by reason",
];

/// The nodes screen: executors, and every other role that reports its certificate's expiry.
pub const NODE_COLUMNS: &[Column] = columns![
    text "NODE" 20 "the executor's id, or source/instance of another platform role",
    text "STATE" 10 "a cell's state: healthy, evacuating (yellow) or lost (red: silent past 20 s)",
    num "MEM USED" 8 "memory reserved by live instances",
    num "MEM CAP" 8 "memory the executor may hand out",
    num "MEM%" 5 "share of capacity used (yellow >= 80 %, red >= 90 %)",
    num "RUNNING" 7 "instances running, as the executor reports",
    num "STARTING" 8 "instances starting",
    num "CRASHED" 7 "instances crashed and not yet replaced",
    num "APPS" 4 "apps with an instance placed here, from the API",
    num "LOG/S" 6 "log lines the executor read from apps per second",
    num "STARTS" 6 "instances started since the executor started",
    num "CRASHES" 7 "instances that crashed since the executor started",
    num "CERT" 7 "days until the node's TLS certificate expires (yellow under 30, red once expired)",
    num "AGE" 4 "seconds since the executor last reported",
];

/// The events screen: audit events from the API and live platform notices.
pub const EVENT_COLUMNS: &[Column] = columns![
    num "TIME" 8 "when (local time)",
    text "LEVEL" 5 "INFO, WARN, ALERT or CRIT",
    text "SOURCE" 16 "the app (by name) or component",
    text "TYPE" 26 "the audit event type or notice kind",
    text "DETAIL" 40 "what happened",
];

/// How a cell is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tone {
    /// Default colours.
    #[default]
    Normal,
    /// Grey: stale, stopped or not monitored.
    Dim,
    /// Cyan: recent activity.
    Active,
    /// Yellow: over the warning threshold.
    Warn,
    /// Red: over the alert threshold.
    Alert,
}

/// One formatted cell.
#[derive(Debug, Clone, PartialEq)]
pub struct CellOut {
    /// What is shown (already clean of control characters).
    pub text: String,
    /// Its colour.
    pub tone: Tone,
    /// The value numeric columns sort by (`None` sorts last either way).
    pub value: Option<f64>,
}

impl CellOut {
    /// A text cell.
    #[must_use]
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            tone: Tone::Normal,
            value: None,
        }
    }

    /// A number cell shown as `text`.
    #[must_use]
    pub fn num(value: Option<f64>, text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            tone: Tone::Normal,
            value: value.filter(|v| v.is_finite()),
        }
    }

    /// The same cell, coloured.
    #[must_use]
    pub fn tone(mut self, tone: Tone) -> Self {
        self.tone = tone;
        self
    }
}

/// One row: a key that stays the same across refreshes (so the selection follows the row
/// when the order changes), the cells, and a tone for the whole row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOut {
    /// Stable identity: an app guid, `source/instance`, an executor id, an event id.
    pub key: String,
    /// One per column.
    pub cells: Vec<CellOut>,
    /// Dims the whole row (stale component, stopped app).
    pub dim: bool,
    /// The app (guid) Enter opens from this row, if any.
    pub link: Option<String>,
}

/// A table's rows, unsorted and unfiltered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Rows in build order.
    pub rows: Vec<RowOut>,
    /// A note shown instead of rows when there are none (why the table is empty).
    pub empty_note: Option<String>,
}

/// Severity of an event or alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Something happened.
    Info,
    /// Something may need a look.
    Warn,
    /// Something needs a look.
    Alert,
    /// Something is broken now.
    Crit,
}

impl Level {
    /// The label in the LEVEL column.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Alert => "ALERT",
            Level::Crit => "CRIT",
        }
    }

    /// The colour of that label.
    #[must_use]
    pub const fn tone(self) -> Tone {
        match self {
            Level::Info => Tone::Normal,
            Level::Warn => Tone::Warn,
            Level::Alert | Level::Crit => Tone::Alert,
        }
    }
}

/// The top lines: who and where, how the streams are doing, and the alert bar.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// `operator (firehose)` or `developer (N app streams)`.
    pub mode: String,
    /// The API (or firehose) being watched.
    pub target: String,
    /// Streams connected / streams wanted.
    pub streams: (u32, u32),
    /// Envelopes per second arriving, over the last 5 s.
    pub envelopes_per_second: f64,
    /// Envelopes the pipeline reported lost on the way to this console.
    pub lost: u64,
    /// Envelopes this console dropped because drawing fell behind.
    pub ui_dropped: u64,
    /// The API's state when it is not fine.
    pub api_note: Option<String>,
    /// Wall clock of the snapshot, UNIX ns.
    pub wall_ns: i64,
    /// The same as `HH:MM:SS` in the configured zone.
    pub time: String,
    /// The alert bar, worst first.
    pub alerts: Vec<(Level, String)>,
}

/// One line of the detail screen's log pane.
#[derive(Debug, Clone, PartialEq)]
pub struct LogOut {
    /// `HH:MM:SS.cc [SRC/IDX] OUT text`, clean of control characters.
    pub text: String,
    /// Stderr (shown red).
    pub err: bool,
}

/// A line of the status boxes (autoscaler, SLO) with its colour.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Clean text.
    pub text: String,
    /// Its colour.
    pub tone: Tone,
}

/// One app, in detail.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppDetail {
    /// The guid.
    pub guid: String,
    /// The name (the guid when the API does not know it).
    pub name: String,
    /// `STARTED 2/2 running · space default · routes: ...`.
    pub summary: String,
    /// The summary's colour (red when not in the desired state).
    pub summary_tone: Tone,
    /// Its instances.
    pub instances: Table,
    /// Requests per second, one per second, oldest first (`SPARK_SECS` values).
    pub requests: Vec<u64>,
    /// Mean latency per second in µs, oldest first (`SPARK_SECS` values; 0 without requests).
    pub latency: Vec<u64>,
    /// Title of the request sparkline: current rates.
    pub requests_title: String,
    /// Title of the latency sparkline: current quantiles.
    pub latency_title: String,
    /// Autoscaler and SLO status lines.
    pub status: Vec<Note>,
    /// This app's events, newest first.
    pub events: Vec<Note>,
    /// The newest log lines, oldest first.
    pub logs: Vec<LogOut>,
}

/// Columns of the detail screen's instance table.
pub const INSTANCE_COLUMNS: &[Column] = columns![
    text "IDX" 4 "instance index",
    text "STATE" 8 "state from the API",
    num "CPU%" 6 "CPU, % of one core",
    num "MEM" 7 "memory used",
    num "MEM%" 5 "of the memory quota (yellow >= 80 %, red >= 90 %)",
    num "MEM LIM" 7 "memory limit (the cgroup's: past it the kernel OOM-kills)",
    num "DISK" 7 "disk the instance's files use",
    num "DISK%" 5 "of the disk quota (yellow >= 80 %, red >= 90 %)",
    num "PIDS" 5 "processes and threads now",
    num "PID LIM" 7 "the kernel's pids limit (none: unisolated, no limit)",
    num "SHARES" 6 "CPU weight, cgroup shares of 1024 (none: unisolated)",
    num "REQ/10" 6 "requests per second over 10 s",
    num "5XX/60" 6 "5xx served in the last 60 s",
    num "LOG/S" 6 "log lines per second over 10 s",
    num "UPTIME" 6 "since the instance started",
    text "EXECUTOR" 14 "where it runs",
    text "LAST CRASH" 30 "the last crash, from the API",
];

/// Everything the screens show, as of one instant.
#[derive(Debug, Clone)]
pub struct View {
    /// When it was computed (monotonic).
    pub now: Instant,
    /// The top lines.
    pub header: Header,
    /// The tables, indexed by [`TableKind::index`].
    pub tables: [Table; 5],
    /// The app on screen, when the detail screen is open.
    pub detail: Option<AppDetail>,
    /// The service instance on screen, when the service screen is open.
    pub service: Option<crate::services::ServiceDetail>,
}

impl View {
    /// An empty view at `now`.
    #[must_use]
    pub fn empty(now: Instant) -> Self {
        Self {
            now,
            header: Header::default(),
            tables: Default::default(),
            detail: None,
            service: None,
        }
    }

    /// One table.
    #[must_use]
    pub fn table(&self, kind: TableKind) -> &Table {
        &self.tables[kind.index()]
    }
}
