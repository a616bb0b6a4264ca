//! Parsing and validating NARs pushed in arbitrary chunks: the full grammar, zero padding,
//! strictly increasing entry names, valid names, nothing after the root node. Contents are
//! never buffered — only one string token (bounded by [`MAX_NAME_LEN`]/[`MAX_TARGET_LEN`])
//! and the previous entry name of each open directory.
//!
//! The same parser drives [`super::restore()`] through the [`Sink`] events.

use std::io::Read;

use super::{CHUNK, MAGIC, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN, padding};
use crate::error::{Error, Result};
use crate::hash::{HashingCounter, Sha256Hash};

/// What a complete, valid NAR hashes to and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarSummary {
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
}

/// Receives the structure of a NAR as it is parsed; every name and target handed over has
/// already been validated.
pub(crate) trait Sink {
    fn directory(&mut self) -> Result<()>;
    fn directory_end(&mut self) -> Result<()>;
    fn enter_entry(&mut self, name: &[u8]) -> Result<()>;
    fn leave_entry(&mut self) -> Result<()>;
    fn regular(&mut self, executable: bool, size: u64) -> Result<()>;
    fn contents(&mut self, data: &[u8]) -> Result<()>;
    fn regular_end(&mut self) -> Result<()>;
    fn symlink(&mut self, target: &[u8]) -> Result<()>;
}

/// A sink that ignores everything: plain validation.
#[derive(Debug, Default)]
pub(crate) struct NoSink;

impl Sink for NoSink {
    fn directory(&mut self) -> Result<()> {
        Ok(())
    }
    fn directory_end(&mut self) -> Result<()> {
        Ok(())
    }
    fn enter_entry(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn leave_entry(&mut self) -> Result<()> {
        Ok(())
    }
    fn regular(&mut self, _: bool, _: u64) -> Result<()> {
        Ok(())
    }
    fn contents(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn regular_end(&mut self) -> Result<()> {
        Ok(())
    }
    fn symlink(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// Where the byte-level reader is inside the current string.
#[derive(Debug, Clone, Copy)]
enum Lex {
    /// Reading the 8-byte length; `have` bytes of it are in `len_buf`.
    Len { have: usize },
    /// Reading the body; `remaining` bytes to go.
    Body { len: u64, remaining: u64 },
    /// Checking the zero padding after a body; `remaining` bytes to go.
    Pad { remaining: usize },
    /// The root node ended; only the end of input may follow.
    End,
    /// An error was reported; nothing more is accepted.
    Failed,
}

/// Which string the grammar expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Magic,
    NodeOpen,
    TypeKw,
    TypeVal,
    /// `executable` or `contents`.
    RegularNext,
    ExecEmpty,
    ContentsKw,
    Contents,
    NodeClose,
    TargetKw,
    Target,
    /// `entry` or `)`.
    DirNext,
    EntryOpen,
    NameKw,
    Name,
    NodeKw,
    EntryClose,
}

impl Want {
    /// Longest string accepted in this position (contents are streamed, not buffered).
    fn max_len(self) -> u64 {
        match self {
            Want::Contents => u64::MAX,
            Want::Name => MAX_NAME_LEN as u64,
            Want::Target => MAX_TARGET_LEN as u64,
            _ => MAGIC.len() as u64,
        }
    }
}

/// The push parser, generic over what happens with the structure it finds.
#[derive(Debug)]
pub(crate) struct Parser<S> {
    sink: S,
    counter: HashingCounter,
    /// Bytes consumed so far: the offset errors report.
    pos: u64,
    lex: Lex,
    len_buf: [u8; 8],
    /// The body of the current (non-contents) string.
    tok: Vec<u8>,
    /// Offset of the current string's length field.
    tok_start: u64,
    want: Want,
    /// Whether the regular file being parsed had the `executable` marker.
    executable: bool,
    /// Previous entry names of the open directories, back to back; `dirs[i]` is where the
    /// name of level `i` starts, or `None` before its first entry.
    prev_names: Vec<u8>,
    dirs: Vec<Option<usize>>,
}

impl<S: Sink> Parser<S> {
    pub(crate) fn new(sink: S) -> Self {
        Parser {
            sink,
            counter: HashingCounter::default(),
            pos: 0,
            lex: Lex::Len { have: 0 },
            len_buf: [0; 8],
            tok: Vec::with_capacity(64),
            tok_start: 0,
            want: Want::Magic,
            executable: false,
            prev_names: Vec::new(),
            dirs: Vec::new(),
        }
    }

    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<()> {
        if matches!(self.lex, Lex::Failed) {
            return Err(self.invalid_at(self.pos, "the NAR was already found invalid"));
        }
        self.counter.update(data);
        let r = self.feed_inner(data);
        if r.is_err() {
            self.lex = Lex::Failed;
        }
        r
    }

    fn feed_inner(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            match self.lex {
                Lex::Len { have } => {
                    if have == 0 {
                        self.tok_start = self.pos;
                    }
                    let n = (8 - have).min(data.len());
                    self.len_buf[have..have + n].copy_from_slice(&data[..n]);
                    self.pos += n as u64;
                    data = &data[n..];
                    self.lex = Lex::Len { have: have + n };
                    if have + n == 8 {
                        self.start_body(u64::from_le_bytes(self.len_buf))?;
                    }
                }
                Lex::Body { len, remaining } => {
                    // Bounded by data.len(), so it fits in usize.
                    let n = remaining.min(data.len() as u64) as usize;
                    if self.want == Want::Contents {
                        self.sink.contents(&data[..n])?;
                    } else {
                        self.tok.extend_from_slice(&data[..n]);
                    }
                    self.pos += n as u64;
                    data = &data[n..];
                    let remaining = remaining - n as u64;
                    self.lex = Lex::Body { len, remaining };
                    if remaining == 0 {
                        self.start_pad(len)?;
                    }
                }
                Lex::Pad { remaining } => {
                    let n = remaining.min(data.len());
                    if let Some(i) = data[..n].iter().position(|&b| b != 0) {
                        return Err(self.invalid_at(self.pos + i as u64, "non-zero padding"));
                    }
                    self.pos += n as u64;
                    data = &data[n..];
                    self.lex = Lex::Pad {
                        remaining: remaining - n,
                    };
                    if remaining == n {
                        self.end_string()?;
                    }
                }
                Lex::End => {
                    return Err(self.invalid_at(self.pos, "trailing data after the NAR"));
                }
                Lex::Failed => {
                    return Err(self.invalid_at(self.pos, "the NAR was already found invalid"));
                }
            }
        }
        Ok(())
    }

    fn start_body(&mut self, len: u64) -> Result<()> {
        if len > self.want.max_len() {
            return Err(self.invalid_at(
                self.tok_start,
                format!("string of {len} bytes is too long for {:?}", self.want),
            ));
        }
        self.tok.clear();
        if self.want == Want::Contents {
            self.sink.regular(self.executable, len)?;
        }
        if len == 0 {
            return self.start_pad(0);
        }
        self.lex = Lex::Body {
            len,
            remaining: len,
        };
        Ok(())
    }

    fn start_pad(&mut self, len: u64) -> Result<()> {
        match padding(len) {
            0 => self.end_string(),
            remaining => {
                self.lex = Lex::Pad { remaining };
                Ok(())
            }
        }
    }

    fn invalid_at(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::InvalidNar {
            offset,
            reason: reason.into(),
        }
    }

    /// A whole string (and its padding) has been read: advance the grammar.
    fn end_string(&mut self) -> Result<()> {
        self.lex = Lex::Len { have: 0 };
        let at = self.tok_start;
        let tok = std::mem::take(&mut self.tok);
        let r = self.on_token(&tok, at);
        self.tok = tok;
        r
    }

    fn expect(&self, tok: &[u8], kw: &[u8], at: u64) -> Result<()> {
        if tok == kw {
            Ok(())
        } else {
            Err(self.invalid_at(
                at,
                format!(
                    "expected {:?}, found {:?}",
                    String::from_utf8_lossy(kw),
                    String::from_utf8_lossy(tok)
                ),
            ))
        }
    }

    fn on_token(&mut self, tok: &[u8], at: u64) -> Result<()> {
        self.want = match self.want {
            Want::Magic => {
                if tok != MAGIC {
                    return Err(self.invalid_at(at, "not a NAR (bad magic)"));
                }
                Want::NodeOpen
            }
            Want::NodeOpen => {
                self.expect(tok, b"(", at)?;
                Want::TypeKw
            }
            Want::TypeKw => {
                self.expect(tok, b"type", at)?;
                Want::TypeVal
            }
            Want::TypeVal => self.on_type(tok, at)?,
            Want::RegularNext => self.on_regular(tok, at)?,
            Want::ExecEmpty => {
                self.expect(tok, b"", at)?;
                Want::ContentsKw
            }
            Want::ContentsKw => {
                self.expect(tok, b"contents", at)?;
                self.executable = true;
                Want::Contents
            }
            Want::Contents => {
                self.sink.regular_end()?;
                Want::NodeClose
            }
            Want::NodeClose => {
                self.expect(tok, b")", at)?;
                return self.node_done();
            }
            Want::TargetKw => {
                self.expect(tok, b"target", at)?;
                Want::Target
            }
            Want::Target => self.on_target(tok, at)?,
            Want::DirNext => match tok {
                b"entry" => Want::EntryOpen,
                b")" => {
                    self.sink.directory_end()?;
                    if let Some(Some(start)) = self.dirs.pop() {
                        self.prev_names.truncate(start);
                    }
                    return self.node_done();
                }
                _ => return Err(self.invalid_at(at, "expected \"entry\" or \")\"")),
            },
            Want::EntryOpen => {
                self.expect(tok, b"(", at)?;
                Want::NameKw
            }
            Want::NameKw => {
                self.expect(tok, b"name", at)?;
                Want::Name
            }
            Want::Name => {
                self.check_name(tok, at)?;
                self.sink.enter_entry(tok)?;
                Want::NodeKw
            }
            Want::NodeKw => {
                self.expect(tok, b"node", at)?;
                Want::NodeOpen
            }
            Want::EntryClose => {
                self.expect(tok, b")", at)?;
                self.sink.leave_entry()?;
                Want::DirNext
            }
        };
        Ok(())
    }

    /// The value after `type`: what kind of node starts.
    fn on_type(&mut self, tok: &[u8], at: u64) -> Result<Want> {
        match tok {
            b"regular" => Ok(Want::RegularNext),
            b"symlink" => Ok(Want::TargetKw),
            b"directory" => {
                if self.dirs.len() >= MAX_DEPTH {
                    return Err(self.invalid_at(at, "directories nested too deeply"));
                }
                self.dirs.push(None);
                self.sink.directory()?;
                Ok(Want::DirNext)
            }
            _ => Err(self.invalid_at(
                at,
                format!("unknown node type {:?}", String::from_utf8_lossy(tok)),
            )),
        }
    }

    /// What follows `type regular`: the executable flag or the contents.
    fn on_regular(&mut self, tok: &[u8], at: u64) -> Result<Want> {
        match tok {
            b"executable" => Ok(Want::ExecEmpty),
            b"contents" => {
                self.executable = false;
                Ok(Want::Contents)
            }
            _ => Err(self.invalid_at(at, "expected \"executable\" or \"contents\"")),
        }
    }

    /// A symlink's target: neither empty nor holding a NUL.
    fn on_target(&mut self, tok: &[u8], at: u64) -> Result<Want> {
        if tok.is_empty() || tok.contains(&0) {
            return Err(self.invalid_at(at, "symlink target is empty or contains NUL"));
        }
        self.sink.symlink(tok)?;
        Ok(Want::NodeClose)
    }

    /// Validates an entry name and that it sorts strictly after the previous one, then
    /// records it as the previous one.
    fn check_name(&mut self, name: &[u8], at: u64) -> Result<()> {
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(self.invalid_at(
                at,
                format!("invalid entry name {:?}", String::from_utf8_lossy(name)),
            ));
        }
        if name.contains(&0) {
            return Err(self.invalid_at(at, "entry name contains NUL"));
        }
        let Some(slot) = self.dirs.last_mut() else {
            // Names are only wanted inside a directory, which pushed a slot.
            return Err(self.invalid_at(at, "entry outside a directory"));
        };
        match *slot {
            Some(start) => {
                if name <= &self.prev_names[start..] {
                    return Err(self.invalid_at(
                        at,
                        format!(
                            "entry {:?} is not sorted after {:?} (or is a duplicate)",
                            String::from_utf8_lossy(name),
                            String::from_utf8_lossy(&self.prev_names[start..])
                        ),
                    ));
                }
                self.prev_names.truncate(start);
            }
            None => *slot = Some(self.prev_names.len()),
        }
        self.prev_names.extend_from_slice(name);
        Ok(())
    }

    fn node_done(&mut self) -> Result<()> {
        if self.dirs.is_empty() {
            self.lex = Lex::End;
        } else {
            self.want = Want::EntryClose;
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<(S, NarSummary)> {
        match self.lex {
            Lex::End => {
                let (nar_hash, nar_size) = self.counter.finish();
                Ok((self.sink, NarSummary { nar_hash, nar_size }))
            }
            Lex::Failed => Err(self.invalid_at(self.pos, "the NAR was already found invalid")),
            _ => Err(self.invalid_at(self.pos, "truncated NAR")),
        }
    }
}

/// Push-based NAR validator: feed arbitrary chunks in order; [`finish`](Self::finish)
/// checks that the NAR ended exactly there and returns its hash and size. Memory is bounded
/// (file contents are hashed, never buffered).
#[derive(Debug)]
pub struct NarValidator {
    parser: Parser<NoSink>,
}

impl Default for NarValidator {
    fn default() -> Self {
        Self::new()
    }
}

impl NarValidator {
    pub fn new() -> Self {
        NarValidator {
            parser: Parser::new(NoSink),
        }
    }

    /// Consumes the next chunk. After an error every later call fails too.
    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        self.parser.feed(data)
    }

    /// Bytes fed so far.
    pub fn position(&self) -> u64 {
        self.parser.pos
    }

    pub fn finish(self) -> Result<NarSummary> {
        self.parser.finish().map(|(_, summary)| summary)
    }
}

/// Reads a whole NAR from `r` and validates it.
pub fn verify(r: impl Read) -> Result<NarSummary> {
    let mut parser = Parser::new(NoSink);
    drive(&mut parser, r)?;
    parser.finish().map(|(_, summary)| summary)
}

/// Feeds everything `r` yields into `parser`.
pub(crate) fn drive<S: Sink>(parser: &mut Parser<S>, mut r: impl Read) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading a NAR", e)),
        };
        parser.feed(&buf[..n])?;
    }
}
