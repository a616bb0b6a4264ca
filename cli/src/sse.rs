//! A Server-Sent Events reader (the subset `GET /build/logs?follow=1` uses: `event:`,
//! `data:`, comments, blank-line dispatch; WHATWG HTML "Server-sent events"). It reads
//! line by line from a `BufRead` and caps each line, so memory stays bounded however long
//! the stream or a line is.

use std::io::{self, BufRead};

/// Longest line kept; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 64 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `message` unless the stream named it.
    pub event: String,
    pub data: String,
}

#[derive(Debug)]
pub struct SseReader<R> {
    inner: R,
    line: Vec<u8>,
}

impl<R: BufRead> SseReader<R> {
    pub fn new(inner: R) -> Self {
        SseReader {
            inner,
            line: Vec::new(),
        }
    }

    /// The next event; `None` at the end of the stream.
    pub fn next_event(&mut self) -> io::Result<Option<SseEvent>> {
        let mut event: Option<String> = None;
        let mut data: Option<String> = None;
        loop {
            if !self.read_line()? {
                // An event not closed by a blank line is incomplete and dropped (per spec).
                return Ok(None);
            }
            let line = String::from_utf8_lossy(&self.line);
            if line.is_empty() {
                if let Some(data) = data.take() {
                    return Ok(Some(SseEvent {
                        event: event.take().unwrap_or_else(|| "message".to_owned()),
                        data,
                    }));
                }
                event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => event = Some(value.to_owned()),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
    }

    /// Reads one line (without its CR/LF) into `self.line`; false at the end of input.
    fn read_line(&mut self) -> io::Result<bool> {
        self.line.clear();
        let mut saw_any = false;
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Ok(saw_any);
            }
            saw_any = true;
            let (chunk, done, used) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], true, i + 1),
                None => (buf, false, buf.len()),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.inner.consume(used);
            if done {
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<SseEvent> {
        let mut r = SseReader::new(text.as_bytes());
        let mut out = Vec::new();
        while let Some(e) = r.next_event().unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn parses_data_named_events_comments_and_crlf() {
        let got = events(
            ": keep-alive\n\ndata: one\n\ndata:two\r\n\r\nevent: end\ndata: {\"a\":1}\n\ndata: cut",
        );
        assert_eq!(
            got,
            vec![
                SseEvent {
                    event: "message".into(),
                    data: "one".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "two".into()
                },
                SseEvent {
                    event: "end".into(),
                    data: "{\"a\":1}".into()
                },
            ]
        );
    }

    #[test]
    fn multi_line_data_and_long_lines_are_capped() {
        let got = events("data: a\ndata: b\n\n");
        assert_eq!(got[0].data, "a\nb");
        let long = format!("data: {}\n\ndata: next\n\n", "x".repeat(MAX_LINE * 3));
        let got = events(&long);
        assert_eq!(got.len(), 2);
        assert!(got[0].data.len() < MAX_LINE);
        assert_eq!(got[1].data, "next");
    }
}
