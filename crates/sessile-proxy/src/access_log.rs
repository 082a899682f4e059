//! Access logs: one JSON or logfmt line per request, sampled, written by a background thread.
//!
//! The request path only formats a line and hands it to a bounded queue (`try_send`): when the
//! writer cannot keep up (a slow disk, a blocked pipe), lines are dropped and counted in
//! `sessile_access_log_dropped_total` instead of slowing requests down. The line is written when
//! the response body ends (or is abandoned), so it carries the bytes sent and the full duration.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{Method, Version};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;

use crate::session::SessionFlag;

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Json,
    Logfmt,
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sink {
    #[default]
    Stdout,
    /// Appended to this file (created if missing).
    File(PathBuf),
}

/// Lines waiting for the writer; beyond this the request path drops lines rather than wait.
const QUEUE: usize = 16 * 1024;

/// How the access log is written: format, sampling and destination.
#[derive(Debug, Clone)]
pub struct AccessLogOptions {
    pub format: AccessLog,
    /// Fraction of requests logged, 0.0 to 1.0; responses with status >= 500 are always logged.
    pub sample: f64,
    pub sink: Sink,
}

impl From<AccessLog> for AccessLogOptions {
    fn from(format: AccessLog) -> Self {
        AccessLogOptions { format, sample: 1.0, sink: Sink::Stdout }
    }
}

/// The access logger shared by all connections.
pub struct AccessLogger {
    format: AccessLog,
    /// Log one request in `every` (0: only server errors).
    every: u64,
    seen: AtomicU64,
    queue: Option<SyncSender<String>>,
    pub dropped: Counter,
}

impl AccessLogger {
    /// Starts the writer thread (unless the format is `Off`). A file that cannot be opened is an error.
    pub fn new(opts: AccessLogOptions) -> std::io::Result<AccessLogger> {
        if opts.format == AccessLog::Off {
            return AccessLogger::with_writer(opts.format, opts.sample, None);
        }
        let out: Box<dyn std::io::Write + Send> = match &opts.sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))?,
            ),
        };
        AccessLogger::with_writer(opts.format, opts.sample, Some(out))
    }

    /// A logger writing to `out` from its own thread (`None`: logging off).
    pub fn with_writer(
        format: AccessLog,
        sample: f64,
        out: Option<Box<dyn std::io::Write + Send>>,
    ) -> std::io::Result<AccessLogger> {
        let every = if sample >= 1.0 || sample.is_nan() {
            1
        } else if sample <= 0.0 {
            0
        } else {
            (1.0 / sample).round().max(1.0) as u64
        };
        let queue = match out {
            Some(out) if format != AccessLog::Off => {
                let (tx, rx) = sync_channel::<String>(QUEUE);
                std::thread::Builder::new().name("sessile-access-log".into()).spawn(move || write_lines(rx, out))?;
                Some(tx)
            }
            _ => None,
        };
        Ok(AccessLogger { format, every, seen: AtomicU64::new(0), queue, dropped: Counter::default() })
    }

    pub fn format(&self) -> AccessLog {
        self.format
    }

    /// Whether this request's line is kept (decided once its status is known).
    fn sampled(&self, status: u16) -> bool {
        if self.queue.is_none() {
            return false;
        }
        if status >= 500 {
            return true;
        }
        match self.every {
            0 => false,
            1 => true,
            n => self.seen.fetch_add(1, Ordering::Relaxed).is_multiple_of(n),
        }
    }

    fn emit(&self, line: String) {
        if let Some(q) = &self.queue {
            match q.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.dropped.inc();
                }
            }
        }
    }
}

impl From<AccessLog> for AccessLogger {
    /// Stdout, every request. Panics only if the OS cannot start a thread.
    fn from(format: AccessLog) -> Self {
        AccessLogger::new(format.into()).expect("starting the access log writer thread")
    }
}

/// Writes queued lines, flushing whenever the queue runs empty, until every sender is gone.
fn write_lines(rx: Receiver<String>, out: Box<dyn std::io::Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(more.as_bytes());
        }
        let _ = out.flush();
    }
}

/// What one request's line says, gathered by the pipeline.
#[derive(Debug, Clone)]
pub struct Entry {
    pub start: Instant,
    pub method: Method,
    pub version: Version,
    pub host: String,
    pub path: String,
    pub peer: SocketAddr,
    pub status: u16,
    /// `kind namespace/name`, or `None` when no route matched.
    pub route: Option<String>,
    pub rule: Option<usize>,
    /// `namespace/service:port`.
    pub backend: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    pub session: SessionFlag,
    /// Why the request's token was not used (metric label), when it was not.
    pub rejection: Option<&'static str>,
    /// Time to response headers.
    pub response_ms: f64,
}

impl Entry {
    fn render(&self, format: AccessLog, bytes: u64, duration_ms: f64) -> String {
        let time = rfc3339_millis(SystemTime::now());
        let version = match self.version {
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let endpoint = self.endpoint.map(|e| e.to_string());
        match format {
            AccessLog::Json => {
                let mut line = serde_json::json!({
                    "time": time, "method": self.method.as_str(), "host": self.host, "path": self.path,
                    "protocol": version, "status": self.status, "route": self.route, "rule": self.rule,
                    "backend": self.backend.as_deref(), "endpoint": endpoint, "session": self.session.as_str(),
                    "session_rejected": self.rejection, "bytes": bytes,
                    "response_ms": round3(self.response_ms), "duration_ms": round3(duration_ms),
                    "peer": self.peer.to_string(),
                })
                .to_string();
                line.push('\n');
                line
            }
            _ => {
                let mut line = String::with_capacity(256);
                let dash = |v: Option<&str>| v.map(logfmt_value).unwrap_or_else(|| "-".to_string());
                let _ = write!(
                    line,
                    "time={time} method={} host={} path={} protocol={version} status={} route={} rule={} backend={} \
                     endpoint={} session={} session_rejected={} bytes={bytes} response_ms={:.3} duration_ms={duration_ms:.3} peer={}",
                    self.method,
                    logfmt_value(&self.host),
                    logfmt_value(&self.path),
                    self.status,
                    dash(self.route.as_deref()),
                    self.rule.map_or_else(|| "-".to_string(), |r| r.to_string()),
                    dash(self.backend.as_deref()),
                    dash(endpoint.as_deref()),
                    self.session.as_str(),
                    self.rejection.unwrap_or("-"),
                    self.response_ms,
                    self.peer
                );
                line.push('\n');
                line
            }
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A logfmt value: bare when safe, else quoted with `"` and `\` escaped and control characters as `\u{..}`.
fn logfmt_value(v: &str) -> String {
    let bare = !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if bare {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = sessile_config::resources::format_timestamp(d.as_secs() as i64);
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), d.subsec_millis())
}

/// A response body that writes the request's access log line when it ends or is dropped.
pub struct LoggedBody<B> {
    inner: B,
    pending: Option<Box<(Entry, Arc<crate::Shared>)>>,
    bytes: u64,
}

impl<B> LoggedBody<B> {
    /// Wraps `inner`; `entry` is `None` when this request is not logged (no cost beyond the check).
    pub fn new(inner: B, entry: Option<(Entry, Arc<crate::Shared>)>) -> Self {
        LoggedBody { inner, pending: entry.map(Box::new), bytes: 0 }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    fn finish(&mut self) {
        if let Some(pending) = self.pending.take() {
            let (entry, shared) = *pending;
            let logger = &shared.access_log;
            let duration_ms = entry.start.elapsed().as_secs_f64() * 1000.0;
            logger.emit(entry.render(logger.format, self.bytes, duration_ms));
        }
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: Body<Data = bytes::Bytes> + Unpin> Body for LoggedBody<B> {
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.pending.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.bytes += data.len() as u64;
                    }
                    if this.inner.is_end_stream() {
                        this.finish();
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Decides whether `entry` is logged; returns what [`LoggedBody::new`] takes.
pub fn keep(
    shared: &Arc<crate::Shared>,
    entry: impl FnOnce() -> Entry,
    status: u16,
) -> Option<(Entry, Arc<crate::Shared>)> {
    shared.access_log.sampled(status).then(|| (entry(), shared.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            start: Instant::now(),
            method: Method::GET,
            version: Version::HTTP_11,
            host: "shop.example.com".into(),
            path: "/cart item".into(),
            peer: SocketAddr::from(([127, 0, 0, 1], 5000)),
            status: 200,
            route: Some("HTTPRoute default/shop".into()),
            rule: Some(0),
            backend: Some(Arc::from("default/svc:80")),
            endpoint: Some(SocketAddr::from(([10, 0, 0, 1], 8080))),
            session: SessionFlag::Resumed,
            rejection: None,
            response_ms: 1.25,
        }
    }

    #[test]
    fn logfmt_quotes_what_needs_quoting() {
        let line = entry().render(AccessLog::Logfmt, 42, 2.5);
        assert!(line.starts_with("time=20"), "{line}");
        assert!(line.contains(" path=\"/cart item\" "), "{line}");
        assert!(
            line.contains(" route=\"HTTPRoute default/shop\" rule=0 backend=default/svc:80 endpoint=10.0.0.1:8080 ")
        );
        assert!(line.contains(" session=resumed session_rejected=- bytes=42 response_ms=1.250 duration_ms=2.500 "));
        assert!(line.ends_with("peer=127.0.0.1:5000\n"));
        assert_eq!(logfmt_value("a\"b\\c\n"), "\"a\\\"b\\\\c\\u{a}\"");
        assert_eq!(logfmt_value(""), "\"\"");
    }

    #[test]
    fn json_lines_parse() {
        let line = entry().render(AccessLog::Json, 7, 3.0);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["bytes"], 7);
        assert_eq!(v["session"], "resumed");
        assert_eq!(v["route"], "HTTPRoute default/shop");
        assert_eq!(v["endpoint"], "10.0.0.1:8080");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    /// A writer stuck until the test lets it go (a full disk, a pipe nobody reads).
    struct Stuck(std::sync::Arc<std::sync::Mutex<()>>);

    impl std::io::Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            drop(self.0.lock());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_costs_dropped_lines_not_blocked_requests() {
        let gate = std::sync::Arc::new(std::sync::Mutex::new(()));
        let held = gate.lock().unwrap();
        let logger = AccessLogger::with_writer(AccessLog::Logfmt, 1.0, Some(Box::new(Stuck(gate.clone())))).unwrap();
        // A line longer than the writer's buffer goes straight to the stuck writer, which blocks on it;
        // then the queue fills and every further line is dropped at once.
        logger.emit("x".repeat(128 * 1024));
        for _ in 0..QUEUE + 500 {
            logger.emit("line\n".to_string());
        }
        assert!(logger.dropped.get() >= 498, "dropped {}", logger.dropped.get());
        drop(held);
    }

    #[test]
    fn sampling_keeps_one_in_n_and_every_server_error() {
        let logger =
            AccessLogger::new(AccessLogOptions { format: AccessLog::Json, sample: 0.25, sink: Sink::Stdout }).unwrap();
        let kept = (0..100).filter(|_| logger.sampled(200)).count();
        assert_eq!(kept, 25);
        assert!((0..10).all(|_| logger.sampled(503)));
        let none =
            AccessLogger::new(AccessLogOptions { format: AccessLog::Json, sample: 0.0, sink: Sink::Stdout }).unwrap();
        assert!(!none.sampled(200) && none.sampled(500));
        let off = AccessLogger::from(AccessLog::Off);
        assert!(!off.sampled(500));
    }
}
