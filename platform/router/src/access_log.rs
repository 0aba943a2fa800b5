//! What one finished request leaves behind in the app's stream: an `RTR` access-log line in
//! gorouter's format and a v2 Timer envelope named `http`, both through the emitter.
//!
//! Flow: the response body finishes (or is dropped) → `body` hands the [`Exchange`] here →
//! [`Exchange::emit`] formats into a per-thread buffer and calls the emitter, which never
//! blocks.
//!
//! Invariant: client-controlled text (URI, headers) is cut to gorouter's field limits and
//! escaped (quotes, backslashes, control and non-ASCII bytes become `\xNN`), so the line cannot
//! be split, forged or turned into terminal escape sequences downstream.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Uri, Version};
use hydrant_emitter::Emitter;
use hydrant_envelope::semantic::{HttpTimer, HttpTimerTags, source_type, tag};

use crate::metrics::{AppSeries, Reason};
use crate::table::Endpoint;

/// Header fields longer than this are cut (gorouter's limit).
const MAX_HEADER_FIELD: usize = 1000;
/// URIs longer than this are cut (gorouter's limit).
const MAX_URI: usize = 20_000;
/// Lines longer than this are cut (gorouter's limit, to fit a UDP datagram).
const MAX_LINE: usize = 65_400;

/// Everything known about one request when its response is done.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) emitter: Emitter,
    pub(crate) router_id: Arc<str>,
    pub(crate) started: Instant,
    pub(crate) started_ns: i64,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) status: u16,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) referer: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) remote: SocketAddr,
    pub(crate) forwarded_for: Option<HeaderValue>,
    pub(crate) forwarded_proto: Option<HeaderValue>,
    pub(crate) request_id: HeaderValue,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) router_error: Option<Reason>,
    pub(crate) backend_time: Duration,
    pub(crate) failed_attempts: u32,
    /// The app's `/metrics` series (`None` for a route without an app).
    pub(crate) app: Option<AppSeries>,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(1024));
    static URI: RefCell<String> = RefCell::new(String::with_capacity(256));
}

impl Exchange {
    /// Emits the Timer and the `RTR` line into the app's stream. Does nothing for an instance
    /// without an app guid (a static route with no `app_id`).
    pub(crate) fn emit(&self) {
        let Some(app_id) = self.endpoint.app_id.as_deref() else {
            return;
        };
        let elapsed = self.started.elapsed();
        if let Some(app) = &self.app {
            app.observe(self.status, elapsed);
        }
        let stopped_ns = self
            .started_ns
            .saturating_add(i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX));
        let index = self.endpoint.index.as_deref().unwrap_or("0");
        URI.with_borrow_mut(|uri| {
            uri.clear();
            uri.push_str("http://");
            push_escaped(
                uri,
                self.host.as_ref().map_or(b"", HeaderValue::as_bytes),
                MAX_HEADER_FIELD,
            );
            push_escaped(uri, self.uri.path().as_bytes(), MAX_URI);
            self.emit_timer(app_id, index, uri, stopped_ns);
        });
        LINE.with_borrow_mut(|line| {
            line.clear();
            self.format_line(line, app_id, index, elapsed);
            self.emitter.log(
                app_id,
                &self.router_id,
                source_type::ROUTER,
                line.as_bytes(),
                false,
            );
        });
    }

    fn emit_timer(&self, app_id: &str, index: &str, uri: &str, stopped_ns: i64) {
        let status = http::StatusCode::from_u16(self.status);
        let status = status.as_ref().map_or("0", http::StatusCode::as_str);
        let user_agent = self
            .user_agent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let request_id = self.request_id.to_str().unwrap_or("");
        let mut remote = [0u8; 64];
        let remote = format_into(&mut remote, format_args!("{}", self.remote));
        let fixed = HttpTimerTags {
            method: self.method.as_str(),
            status_code: status,
            uri,
            request_id,
            user_agent,
            remote_address: remote,
            app_id,
            instance_id: index,
            routing_instance_id: &self.endpoint.instance_id,
            origin: "hydrant-router",
        }
        .fixed();
        let mut tags: Vec<(&str, &str)> =
            Vec::with_capacity(fixed.len() + self.endpoint.tags.len());
        tags.extend_from_slice(&fixed);
        // Consumers (SLOs, the console) count the router's own errors apart from the app's.
        if let Some(reason) = self.router_error {
            tags.push((tag::ROUTER_ERROR, reason.as_str()));
        }
        for (k, v) in self.endpoint.tags.iter() {
            if !fixed.iter().any(|(f, _)| f == k) && *k != tag::ROUTER_ERROR {
                tags.push((k, v));
            }
        }
        self.emitter.timer(
            app_id,
            index,
            HttpTimer::NAME,
            self.started_ns,
            stopped_ns,
            &tags,
        );
    }

    /// gorouter's access-log line (`accesslog/schema/access_log_record.go`).
    pub(crate) fn format_line(
        &self,
        out: &mut String,
        app_id: &str,
        index: &str,
        elapsed: Duration,
    ) {
        fn opt(v: &Option<HeaderValue>) -> &[u8] {
            v.as_ref().map_or(b"-", HeaderValue::as_bytes)
        }
        push_escaped(out, opt(&self.host), MAX_HEADER_FIELD);
        out.push_str(" - [");
        push_timestamp(out, self.started_ns);
        out.push_str("] \"");
        out.push_str(self.method.as_str());
        out.push(' ');
        let uri = self.uri.path_and_query().map_or("/", |p| p.as_str());
        push_escaped(out, uri.as_bytes(), MAX_URI);
        let _ = write!(
            out,
            " {:?}\" {} {} {} \"",
            self.version, self.status, self.bytes_received, self.bytes_sent
        );
        push_escaped(out, opt(&self.referer), MAX_HEADER_FIELD);
        out.push_str("\" \"");
        push_escaped(out, opt(&self.user_agent), MAX_HEADER_FIELD);
        let _ = write!(
            out,
            "\" \"{}\" \"{}\" x_forwarded_for:\"",
            self.remote, self.endpoint.addr_text
        );
        push_escaped(out, opt(&self.forwarded_for), MAX_HEADER_FIELD);
        out.push_str("\" x_forwarded_proto:\"");
        push_escaped(out, opt(&self.forwarded_proto), MAX_HEADER_FIELD);
        out.push_str("\" vcap_request_id:\"");
        push_escaped(out, self.request_id.as_bytes(), MAX_HEADER_FIELD);
        let router_time = elapsed.saturating_sub(self.backend_time);
        let _ = write!(
            out,
            "\" response_time:{:.6} gorouter_time:{:.6} app_id:\"{app_id}\" app_index:\"{index}\" \
             instance_id:\"{}\" failed_attempts:{} x_cf_routererror:\"{}\"",
            elapsed.as_secs_f64(),
            router_time.as_secs_f64(),
            self.endpoint.instance_id,
            self.failed_attempts,
            self.router_error.map_or("-", Reason::gorouter),
        );
        if out.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
    }
}

/// Formats into a stack buffer; the text is cut if it does not fit (never for a socket address
/// in 64 bytes).
pub(crate) fn format_into<'b>(buf: &'b mut [u8], args: std::fmt::Arguments<'_>) -> &'b str {
    struct Cursor<'a> {
        buf: &'a mut [u8],
        len: usize,
    }
    impl std::fmt::Write for Cursor<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = self.buf.len() - self.len;
            if s.len() > room {
                return Err(std::fmt::Error);
            }
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
            Ok(())
        }
    }
    let mut cursor = Cursor { buf, len: 0 };
    let _ = cursor.write_fmt(args);
    let len = cursor.len;
    std::str::from_utf8(&buf[..len]).unwrap_or("")
}

/// Appends `bytes` as printable ASCII: `"` and `\` are backslash-escaped, control and
/// non-ASCII bytes become `\xNN`; at most `limit` input bytes are used.
pub(crate) fn push_escaped(out: &mut String, bytes: &[u8], limit: usize) {
    for &b in bytes.iter().take(limit) {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

/// Appends UNIX nanoseconds as `2006-01-02T15:04:05.000000000Z`.
pub(crate) fn push_timestamp(out: &mut String, unix_ns: i64) {
    hydrant_envelope::time::push_rfc3339_nanos_utc(out, unix_ns);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;

    #[test]
    fn timestamps_match_gorouters_layout() {
        let mut out = String::new();
        push_timestamp(&mut out, 0);
        assert_eq!(out, "1970-01-01T00:00:00.000000000Z");
        out.clear();
        // 2024-02-29T23:59:58.123456789Z
        push_timestamp(&mut out, 1_709_251_198_123_456_789);
        assert_eq!(out, "2024-02-29T23:59:58.123456789Z");
        out.clear();
        push_timestamp(&mut out, 951_782_400_000_000_000);
        assert_eq!(out, "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn untrusted_text_is_escaped_and_cut() {
        let mut out = String::new();
        push_escaped(&mut out, b"a\"b\\c\x1b[31m\xff", 100);
        assert_eq!(out, "a\\\"b\\\\c\\x1b[31m\\xff");
        out.clear();
        push_escaped(&mut out, &[b'x'; 50], 10);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn socket_addresses_format_on_the_stack() {
        let mut buf = [0u8; 64];
        let addr: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        assert_eq!(
            format_into(&mut buf, format_args!("{addr}")),
            "[2001:db8::1]:65535"
        );
    }
}
