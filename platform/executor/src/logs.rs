//! App output and lifecycle lines → Log envelopes: the first step of every log line's journey.
//!
//! Flow: the app's stdout/stderr pipe → [`pump`] (reads continuously) → [`LineSplitter`] (one
//! message per line, at most [`MAX_MESSAGE`] bytes) → [`LogSink`] → the emitter → the agent.
//!
//! Invariant: the pipe is always being drained. Nothing here waits on the network: the emitter
//! drops (and counts) when the agent cannot keep up, so a chatty app is never blocked on a
//! full pipe. Memory is bounded by [`MAX_MESSAGE`] per stream whatever the app writes.

use hydrant_emitter::{Counter, Emitter};
use hydrant_envelope::semantic::{event_title, source_type, tag};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest log message, bytes (Diego's `MAX_MESSAGE_SIZE`, 60 KiB); longer lines are chunked.
pub(crate) const MAX_MESSAGE: usize = 61_440;
/// How much is read from a pipe at once.
const READ_CHUNK: usize = 64 * 1024;

/// The `source_type` of the app's own output.
pub(crate) const APP_SOURCE: &str = source_type::APP_WEB;
/// The `source_type` of the executor's lines about the container.
pub(crate) const CELL_SOURCE: &str = source_type::CELL;
/// The `source_type` of health-check outcomes.
pub(crate) const HEALTH_SOURCE: &str = source_type::HEALTH;

/// Splits a byte stream into messages on `\n` or `\r` (a `\r\n` pair ends one message), cutting
/// any line longer than [`MAX_MESSAGE`] into chunks of that size. A line break right after a
/// full chunk ends that chunk rather than adding an empty message.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    buf: Vec<u8>,
    last: Last,
}

/// What the previous byte did, so `\r\n` and chunk-then-newline count as one break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Text,
    CarriageReturn,
    Chunk,
}

impl LineSplitter {
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(1024),
            last: Last::Text,
        }
    }

    /// Feeds `data`, calling `out` for every complete message.
    pub(crate) fn push(&mut self, data: &[u8], mut out: impl FnMut(&[u8])) {
        for &byte in data {
            match (byte, self.last) {
                (b'\n', Last::CarriageReturn | Last::Chunk) => self.last = Last::Text,
                (b'\r', Last::Chunk) => self.last = Last::CarriageReturn,
                (b'\n' | b'\r', _) => {
                    out(&self.buf);
                    self.buf.clear();
                    self.last = if byte == b'\r' {
                        Last::CarriageReturn
                    } else {
                        Last::Text
                    };
                }
                _ => {
                    self.last = Last::Text;
                    self.buf.push(byte);
                    if self.buf.len() == MAX_MESSAGE {
                        out(&self.buf);
                        self.buf.clear();
                        self.last = Last::Chunk;
                    }
                }
            }
        }
    }

    /// Ends the stream: a last line without a newline is still a message.
    pub(crate) fn finish(&mut self, mut out: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            out(&self.buf);
            self.buf.clear();
        }
    }
}

/// `Event.title` of the envelope that reports an instance crash in its app's stream.
pub(crate) const CRASH_EVENT_TITLE: &str = event_title::APP_CRASH;

/// Where one instance's log lines go, with the instance's identity and tags baked in.
#[derive(Debug, Clone)]
pub(crate) struct LogSink {
    emitter: Option<Emitter>,
    source_id: String,
    instance_id: String,
    app_tags: Vec<(String, String)>,
    cell_tags: Vec<(String, String)>,
    health_tags: Vec<(String, String)>,
    lines: Counter,
    no_agent: Counter,
}

impl LogSink {
    /// A sink for app `source_id`, instance index `instance_id`, with `extra` tags (the start
    /// request's tags) on every line.
    pub(crate) fn new(
        emitter: Option<Emitter>,
        source_id: &str,
        instance_id: &str,
        extra: &[(String, String)],
        lines: Counter,
        no_agent: Counter,
    ) -> Self {
        let with = |source_type: &str| {
            let mut tags = vec![(tag::SOURCE_TYPE.to_owned(), source_type.to_owned())];
            tags.extend(extra.iter().filter(|(k, _)| k != tag::SOURCE_TYPE).cloned());
            tags
        };
        Self {
            emitter,
            source_id: source_id.to_owned(),
            instance_id: instance_id.to_owned(),
            app_tags: with(APP_SOURCE),
            cell_tags: with(CELL_SOURCE),
            health_tags: with(HEALTH_SOURCE),
            lines,
            no_agent,
        }
    }

    fn emit(&self, tags: &[(String, String)], payload: &[u8], is_err: bool) {
        self.lines.inc();
        let Some(emitter) = &self.emitter else {
            self.no_agent.inc();
            return;
        };
        let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        emitter.log_with_tags(&self.source_id, &self.instance_id, payload, is_err, &tags);
    }

    /// One line of the app's own output.
    pub(crate) fn app(&self, payload: &[u8], is_err: bool) {
        self.emit(&self.app_tags, payload, is_err);
    }

    /// One lifecycle line (`CELL`).
    pub(crate) fn cell(&self, text: &str) {
        self.emit(&self.cell_tags, text.as_bytes(), false);
    }

    /// One health-check line (`HEALTH`), on stderr as Diego writes it.
    pub(crate) fn health(&self, text: &str) {
        self.emit(&self.health_tags, text.as_bytes(), true);
    }

    /// An `app.crash` Event in the app's stream, so firehose consumers (the console, rolling
    /// windows) see crashes without listening to the bus.
    pub(crate) fn crash_event(&self, reason: &str, exit_status: Option<i32>, description: &str) {
        if let Some(emitter) = &self.emitter {
            let status = exit_status.map_or_else(String::new, |s| s.to_string());
            let tags = [
                ("reason", reason),
                ("exit_status", status.as_str()),
                (tag::SOURCE_TYPE, CELL_SOURCE),
            ];
            emitter.event(
                &self.source_id,
                &self.instance_id,
                CRASH_EVENT_TITLE,
                description,
                &tags,
            );
        }
    }

    /// Emits a gauge envelope for this instance, with `extra` tags beside the app's (e.g. how
    /// the instance is isolated).
    pub(crate) fn gauge(&self, metrics: &[(&str, f64, &str)], extra: &[(&str, &str)]) {
        if let Some(emitter) = &self.emitter {
            let mut tags: Vec<(&str, &str)> = self
                .app_tags
                .iter()
                .filter(|(k, _)| k != tag::SOURCE_TYPE)
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            tags.extend_from_slice(extra);
            emitter.gauge(&self.source_id, &self.instance_id, metrics, &tags);
        }
    }
}

/// Reads `pipe` until it closes, sending each line to `sink`. Never waits on anything but the
/// pipe itself.
pub(crate) async fn pump(mut pipe: impl AsyncRead + Unpin, sink: LogSink, is_err: bool) {
    let mut splitter = LineSplitter::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let data = buf.get(..n).unwrap_or_default();
                splitter.push(data, |line| sink.app(line, is_err));
            }
        }
    }
    splitter.finish(|line| sink.app(line, is_err));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new();
        for chunk in chunks {
            s.push(chunk, |l| out.push(l.to_vec()));
        }
        s.finish(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn splits_on_newlines_across_reads() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n\nlast"]),
            vec![
                b"hello".to_vec(),
                b"world".to_vec(),
                b"".to_vec(),
                b"last".to_vec()
            ]
        );
    }

    #[test]
    fn crlf_is_one_break_and_lone_cr_is_a_break() {
        assert_eq!(
            split(&[b"a\r", b"\nb\rc\n"]),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn long_lines_are_chunked_at_60_kib() {
        let line = vec![b'x'; MAX_MESSAGE * 2 + 10];
        let mut input = line;
        input.push(b'\n');
        let out = split(&[&input[..1000], &input[1000..]]);
        assert_eq!(
            out.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_MESSAGE, MAX_MESSAGE, 10]
        );
        let exact = [vec![b'y'; MAX_MESSAGE], b"\n".to_vec()].concat();
        // A line of exactly the maximum is one message, and its newline does not add an empty one.
        assert_eq!(split(&[&exact]).len(), 1);
    }
}
