//! Recent log lines for ComfyUI's `/internal/logs` (the frontend's terminal panel): a tracing
//! [`Layer`] formats every event it sees into one line and keeps the last [`CAPACITY`] of them in
//! a ring, and hands each new line to whoever [`subscribe`]s (the socket hub, which sends them
//! to clients that asked for `logs` events).
//!
//! One ring per process: `weft serve` adds [`layer`] to its subscriber in `main.rs`; tests and
//! other embedders call [`install_capture_only`]. Imports no other Weft layer.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How many lines are kept (ComfyUI keeps 300).
pub const CAPACITY: usize = 300;

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When it was logged, ISO 8601 in UTC with microseconds (`2025-01-02T03:04:05.000006+00:00`).
    pub time: String,
    /// `LEVEL target: message key=value …`, ending in a newline.
    pub message: String,
}

struct Ring {
    entries: Mutex<VecDeque<LogEntry>>,
    sender: broadcast::Sender<LogEntry>,
}

fn ring() -> &'static Ring {
    static RING: OnceLock<Ring> = OnceLock::new();
    RING.get_or_init(|| Ring {
        entries: Mutex::new(VecDeque::with_capacity(CAPACITY)),
        sender: broadcast::channel(1024).0,
    })
}

/// The kept lines, oldest first.
pub fn recent() -> Vec<LogEntry> {
    let entries = ring().entries.lock().unwrap_or_else(|p| p.into_inner());
    entries.iter().cloned().collect()
}

/// Every line logged from now on (a receiver that falls behind skips lines).
pub fn subscribe() -> broadcast::Receiver<LogEntry> {
    ring().sender.subscribe()
}

fn record(entry: LogEntry) {
    let ring = ring();
    {
        let mut entries = ring.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry.clone());
    }
    // No receiver is not an error: nobody is listening yet.
    let _ = ring.sender.send(entry);
}

/// The layer that feeds the ring; add it to a `tracing_subscriber` registry.
pub fn layer() -> RingLayer {
    RingLayer
}

/// Makes the ring the process's only log consumer at INFO and above (and routes the `log`
/// crate's records, such as actix's request lines, to it), unless a subscriber is already set.
/// For tests and embedders that do not print logs.
pub fn install_capture_only() {
    use tracing_subscriber::prelude::*;
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(layer())
        .try_init();
}

/// See [`layer`].
#[derive(Debug, Clone, Copy)]
pub struct RingLayer;

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        let mut line = Line::default();
        event.record(&mut line);
        // Records from the `log` crate carry their real target as a field.
        let target = line.log_target.as_deref().unwrap_or(metadata.target());
        record(LogEntry {
            time: iso_time(SystemTime::now()),
            message: format!(
                "{} {target}: {}{}\n",
                metadata.level(),
                line.message,
                line.fields
            ),
        });
    }
}

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
    log_target: Option<String>,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "log.target" => self.log_target = Some(value.to_owned()),
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.fields, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

/// `time` as ISO 8601 in UTC with microseconds.
fn iso_time(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs() as i64;
    let (year, month, day) = civil_date(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since.subsec_micros()
    )
}

/// Year, month and day of a day count since 1970-01-01 (proleptic Gregorian calendar).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let of_era = days.rem_euclid(146_097);
    let year_of_era = (of_era - of_era / 1460 + of_era / 36_524 - of_era / 146_096) / 365;
    let of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * of_year + 2) / 153;
    let day = (of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_iso_8601_in_utc() {
        let at = |s: u64, micros: u64| {
            iso_time(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(micros))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005+00:00");
        assert_eq!(
            at(1_735_787_045, 123_456),
            "2025-01-02T03:04:05.123456+00:00"
        );
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000+00:00");
    }

    #[test]
    fn the_ring_keeps_the_newest_lines_and_tells_subscribers() {
        let mut lines = subscribe();
        for i in 0..CAPACITY + 5 {
            record(LogEntry {
                time: String::new(),
                message: format!("ring-test {i}\n"),
            });
        }
        let kept: Vec<String> = recent()
            .into_iter()
            .filter(|e| e.message.starts_with("ring-test"))
            .map(|e| e.message)
            .collect();
        assert!(kept.len() <= CAPACITY);
        assert_eq!(
            kept.last().map(String::as_str),
            Some(format!("ring-test {}\n", CAPACITY + 4).as_str())
        );
        assert_eq!(lines.try_recv().unwrap().message, "ring-test 0\n");
    }
}
