//! Log output: `tracing` to stdout, made safe for a hospital by construction:
//!
//! - The libraries below us (webrtc-rs, sqlx, hyper, …) log at most warnings, whatever the
//!   configured filter says: their debug and trace output is per packet and full of addresses.
//! - Every line passes a writer that replaces IP addresses by `[ip]` and byte dumps (a Rust
//!   `b"…"` literal or a long list of numbers, which is how a packet's `Debug` shows its
//!   payload) by `[removed]`, so no library can write media into the log.
//!
//! Our own code logs pseudonymous ids only, never names. Lines are text for people or one JSON
//! object each for journald/Loki (`log.format`); colour codes only when stdout is a terminal.

use std::borrow::Cow;
use std::io::{self, IsTerminal, Write};

use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Starts logging to stdout with `filter` (a tracing `EnvFilter` directive).
pub fn init(filter: &str, format: LogFormat) {
    // A journal or a file gets no escape codes; a person at a terminal gets colours.
    let ansi = io::stdout().is_terminal();
    tracing::subscriber::set_global_default(subscriber_with(filter, format, ansi, io::stdout))
        .expect("logging is initialised once, at start-up");
}

/// The subscriber `init` installs, writing text without colour codes to `writer`. Tests
/// install it with a capture.
pub fn subscriber<W>(filter: &str, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    subscriber_with(filter, LogFormat::Text, false, writer)
}

/// `filter` for our own targets, capped at `warn` for every library, the redacting writer,
/// and lines as `format` (with colour codes only if `ansi`).
pub fn subscriber_with<W>(
    filter: &str,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let libraries_capped = filter_fn(|meta| {
        meta.target().starts_with("kursrelay") || *meta.level() <= tracing::Level::WARN
    });
    let lines = tracing_subscriber::fmt::layer().with_writer(Redacting(writer));
    let lines: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match format {
        LogFormat::Text => lines.with_ansi(ansi).boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(lines.with_filter(EnvFilter::new(filter).and(libraries_capped)))
}

/// Wraps a `MakeWriter` so every line it writes has IP addresses replaced by `[ip]`.
#[derive(Clone)]
pub struct Redacting<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(self.0.make_writer())
    }
}

pub struct RedactingWriter<W>(W);

impl<W: Write> Write for RedactingWriter<W> {
    /// The fmt layer writes each event in one call, so a whole line arrives here at once.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(redact(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Replaces byte dumps by `[removed]` and IP addresses by `[ip]`.
pub fn redact(text: &str) -> Cow<'_, str> {
    match scrub_bytes(text) {
        Cow::Borrowed(t) => redact_ips(t),
        Cow::Owned(t) => Cow::Owned(redact_ips(&t).into_owned()),
    }
}

/// Lists of at least this many numbers are taken for byte dumps.
const MIN_DUMPED_NUMBERS: usize = 4;

/// Replaces every `b"…"` literal (how `Bytes` prints) and every `[n, n, n, n, …]` list of
/// numbers (how `Vec<u8>` and arrays print) by `[removed]`.
fn scrub_bytes(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        let end = if bytes[i] == b'b'
            && bytes.get(i + 1) == Some(&b'"')
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
        {
            byte_literal_end(bytes, i + 2)
        } else if bytes[i] == b'[' {
            number_list_end(bytes, i + 1)
        } else {
            None
        };
        match end {
            Some(end) => {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                o.push_str(&text[last..i]);
                o.push_str("[removed]");
                last = end;
                i = end;
            }
            None => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[last..]);
            Cow::Owned(o)
        }
    }
}

/// The index after the closing quote of a byte literal whose body starts at `from` (an
/// unterminated one runs to the end of the line).
fn byte_literal_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut j = from;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    Some(bytes.len())
}

/// The index after `]` if `[` at `from - 1` opens a list of `MIN_DUMPED_NUMBERS` or more
/// numbers (a list cut off by the end of the line counts too).
fn number_list_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut j = from;
    let mut numbers = 0;
    let mut in_number = false;
    while j < bytes.len() {
        match bytes[j] {
            b'0'..=b'9' => {
                if !in_number {
                    numbers += 1;
                    in_number = true;
                }
            }
            b',' | b' ' => in_number = false,
            b']' => break,
            _ => return None,
        }
        j += 1;
    }
    if numbers < MIN_DUMPED_NUMBERS {
        return None;
    }
    Some((j + 1).min(bytes.len()))
}

/// Replaces IPv4 addresses and IPv6 addresses (those with `::` or all eight groups) by `[ip]`.
/// Times like `05:46:34` are left alone.
fn redact_ips(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let is_run = |b: u8| b.is_ascii_hexdigit() || b == b'.' || b == b':';
    let mut out: Option<String> = None;
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !is_run(bytes[i]) || (i > 0 && (bytes[i - 1].is_ascii_alphanumeric())) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_run(bytes[i]) {
            i += 1;
        }
        // A word character right after the run (e.g. "10.5ms") means it is not an address.
        if i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            continue;
        }
        // Sentence punctuation after an address is not part of it.
        let mut end = i;
        while end > start
            && matches!(bytes[end - 1], b'.' | b':')
            && !text[start..end].ends_with("::")
        {
            end -= 1;
        }
        if is_ip(&text[start..end]) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[last..start]);
            o.push_str("[ip]");
            last = end;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[last..]);
            Cow::Owned(o)
        }
    }
}

fn is_ip(token: &str) -> bool {
    let colons = token.bytes().filter(|&b| b == b':').count();
    // IPv4, optionally with ":port".
    let host = if colons == 1 {
        token.split(':').next().unwrap_or("")
    } else {
        token
    };
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() == 4
        && parts
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return true;
    }
    (token.contains("::") || colons >= 7) && token.parse::<std::net::Ipv6Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `MakeWriter` that collects everything written.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn log_one(format: LogFormat, ansi: bool) -> String {
        let out = Capture::default();
        let sub = subscriber_with("info", format, ansi, out.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(member = "m-1", peer = "10.1.2.3:5000", "joined");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_are_json_and_redacted() {
        let text = log_one(LogFormat::Json, false);
        let line = text.lines().next().expect("one line");
        let v: serde_json::Value = serde_json::from_str(line).expect(line);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "joined");
        assert_eq!(v["member"], "m-1");
        assert_eq!(v["peer"], "[ip]", "{line}");
    }

    #[test]
    fn colour_codes_only_when_asked_for() {
        assert!(!log_one(LogFormat::Text, false).contains('\u{1b}'));
        assert!(log_one(LogFormat::Text, true).contains('\u{1b}'));
        assert!(!log_one(LogFormat::Json, false).contains('\u{1b}'));
    }

    #[test]
    fn redacts_addresses_only() {
        let cases = [
            ("rtp_packet 127.0.0.1:65535", "rtp_packet [ip]"),
            ("from 10.0.0.12 to 192.168.1.5:80.", "from [ip] to [ip]."),
            ("peer ::1 and fe80::1", "peer [ip] and [ip]"),
            ("addr 2001:db8:0:0:0:0:0:1 ok", "addr [ip] ok"),
            (
                "2026-11-22T05:46:34.782192Z  INFO x",
                "2026-11-22T05:46:34.782192Z  INFO x",
            ),
            ("took 10.5ms, version 1.2.3", "took 10.5ms, version 1.2.3"),
            (
                "member=5b0f5c2e-aa00-4b5e-9f00-1234567890ab",
                "member=5b0f5c2e-aa00-4b5e-9f00-1234567890ab",
            ),
            ("nothing here", "nothing here"),
            ("list [1, 2] of two", "list [1, 2] of two"),
            ("bytes [128, 0, 12, 7, 99] end", "bytes [removed] end"),
            (r#"payload: b"\x80\x01ab\"c" }"#, "payload: [removed] }"),
            (r#"cut b"\x80\x01"#, "cut [removed]"),
            ("[ip] and [removed] stay", "[ip] and [removed] stay"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    /// How webrtc-rs logged a packet it could not deliver: with the fix in place nothing of the
    /// payload survives the writer.
    #[test]
    fn a_dumped_rtp_packet_keeps_no_payload() {
        let payload: Vec<u8> = (0..200u8).collect();
        let packet = rtc::rtp::Packet {
            header: Default::default(),
            payload: bytes::Bytes::from(payload.clone()),
        };
        let line =
            format!("Failed to send RtpPacket to track remote 1: Full(OnRtpPacket({packet:?}))");
        let dump = format!("{:?}", bytes::Bytes::from(payload[20..40].to_vec()));
        assert!(
            line.contains(&dump[2..dump.len() - 1]),
            "the test line carries the payload"
        );
        let clean = redact(&line);
        assert!(!clean.contains(&dump[2..dump.len() - 1]), "{clean}");
        assert!(!clean.contains("\\x"), "{clean}");
        let vec_line = format!("data {:?}", &payload[..50]);
        assert_eq!(redact(&vec_line), "data [removed]");
    }
}
