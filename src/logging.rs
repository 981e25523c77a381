//! Log output: `tracing` to stdout through a writer that redacts IP addresses, because the
//! WebRTC libraries below us print socket addresses in some of their warnings and an address
//! is personal data here. Our own code logs pseudonymous ids only, never names.

use std::borrow::Cow;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Starts logging to stdout with `filter` (a tracing `EnvFilter` directive).
pub fn init(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(Redacting(io::stdout))
        .init();
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

/// Replaces IPv4 addresses and IPv6 addresses (those with `::` or all eight groups) by `[ip]`.
/// Times like `05:46:34` are left alone.
pub fn redact(text: &str) -> Cow<'_, str> {
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
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }
}
