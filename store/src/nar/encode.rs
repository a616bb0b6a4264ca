//! Serialising a file-system object into a NAR, as `nix-store --dump` does, as a pull-based
//! stream with bounded memory that can also start at an arbitrary byte offset.
//!
//! The stream alternates between *header runs* (all the small strings between two file
//! contents, generated into one reusable buffer) and *file contents* (read straight from
//! the open file into the caller's buffer). Memory is one open file, one header buffer
//! capped near [`HDR_LIMIT`], and per open directory the sorted list of its entry names.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{CHUNK, MAGIC, padding, put_str};
use crate::error::{Error, Result};
use crate::hash::{HashingCounter, Sha256Hash};

/// Header bytes generated before handing them out; a directory of many empty files or
/// symlinks would otherwise make one header run as large as its whole listing.
const HDR_LIMIT: usize = 64 * 1024;

/// Streams the NAR of a filesystem object at `path` (a physical path) as [`std::io::Read`],
/// with memory bounded independently of the tree's total size: one open file at a time, a
/// stack of per-directory sorted name lists and a small header buffer, never the whole NAR.
///
/// All methods do blocking file-system I/O. Read errors are `io::Error`s wrapping
/// [`Error`] (`io::Error::other`); a file whose size changes while it is read is an error,
/// never a silently corrupt NAR.
#[derive(Debug)]
pub struct NarEncoder {
    /// The object being visited: the root joined with the names of the open directories.
    path: PathBuf,
    /// Open directories, outermost first. Frames at `depth..` are spare ones kept so their
    /// allocations are reused by later directories.
    frames: Vec<DirFrame>,
    depth: usize,
    /// The current header run and how much of it was handed out (or skipped).
    hdr: Vec<u8>,
    hdr_pos: usize,
    /// The regular file whose contents are being streamed.
    file: Option<OpenFile>,
    /// NAR bytes still to drop before output starts (`new_at`).
    skip: u64,
    started: bool,
    done: bool,
    /// An error met after some bytes of a `read` were already produced; reported next call.
    deferred: Option<Error>,
    failed: bool,
}

/// The sorted entry names of one directory, stored back to back in one buffer.
#[derive(Debug, Default)]
struct DirFrame {
    names: Vec<u8>,
    spans: Vec<(usize, usize)>,
    next: usize,
}

#[derive(Debug)]
struct OpenFile {
    file: File,
    size: u64,
    remaining: u64,
}

impl NarEncoder {
    /// Starts the NAR of `path`. The root is examined right away, so a missing path or an
    /// unsupported file type is reported here rather than on the first read.
    pub fn new(path: &Path) -> Result<Self> {
        Self::new_at(path, 0)
    }

    /// Starts the stream at byte `offset` of the NAR without reading the content of files
    /// that lie wholly before `offset` (their sizes come from metadata; the file holding
    /// `offset` is opened and seeked). Offsets past the end give an empty stream.
    pub fn new_at(path: &Path, offset: u64) -> Result<Self> {
        let mut enc = NarEncoder {
            path: path.to_path_buf(),
            frames: Vec::new(),
            depth: 0,
            hdr: Vec::with_capacity(4096),
            hdr_pos: 0,
            file: None,
            skip: offset,
            started: false,
            done: false,
            deferred: None,
            failed: false,
        };
        enc.step()?;
        enc.skip_hdr();
        Ok(enc)
    }

    /// Fills as much of `buf` as the NAR allows; 0 means the end. Unlike a bare `read`, this
    /// keeps going across file boundaries, so a tree of small files still comes out in
    /// buffer-sized pieces.
    fn read_nar(&mut self, buf: &mut [u8]) -> Result<usize> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if self.failed {
            return Err(Error::io(
                format!("NAR of {}", self.path.display()),
                io::Error::other("the encoder failed earlier"),
            ));
        }
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_some(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    self.failed = true;
                    if filled == 0 {
                        return Err(e);
                    }
                    self.deferred = Some(e);
                    break;
                }
            }
        }
        Ok(filled)
    }

    /// Produces at least one byte into a non-empty `buf`, or 0 at the end.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        loop {
            if self.hdr_pos < self.hdr.len() {
                let n = buf.len().min(self.hdr.len() - self.hdr_pos);
                buf[..n].copy_from_slice(&self.hdr[self.hdr_pos..self.hdr_pos + n]);
                self.hdr_pos += n;
                return Ok(n);
            }
            if self.file.is_some() {
                return self.read_contents(buf);
            }
            if self.done {
                return Ok(0);
            }
            self.refill()?;
        }
    }

    /// Reads file contents straight into `buf`. When `buf` has room past the expected end
    /// it asks for one byte more, so a file that grew is caught without an extra syscall.
    fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize> {
        let Some(open) = self.file.as_mut() else {
            return Ok(0);
        };
        let want = if (buf.len() as u64) > open.remaining {
            // remaining < buf.len() here, so it fits in usize.
            open.remaining as usize + 1
        } else {
            buf.len()
        };
        let n = loop {
            match open.file.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::io(format!("reading {}", self.path.display()), e));
                }
            }
        };
        if n == 0 {
            return Err(changed_size(&self.path, open.size, "shrank"));
        }
        if n as u64 > open.remaining {
            return Err(changed_size(&self.path, open.size, "grew"));
        }
        open.remaining -= n as u64;
        if open.remaining == 0 {
            let size = open.size;
            self.file = None;
            // The tail goes into a fresh header run; the previous one was fully handed out.
            self.hdr.clear();
            self.hdr_pos = 0;
            self.end_contents(size);
        }
        Ok(n)
    }

    /// Generates the next header run; called when the previous one and any file contents
    /// have been handed out.
    fn refill(&mut self) -> Result<()> {
        self.hdr.clear();
        self.hdr_pos = 0;
        while !self.done && self.file.is_none() && self.hdr.len() - self.hdr_pos < HDR_LIMIT {
            self.step()?;
            self.skip_hdr();
        }
        Ok(())
    }

    /// Drops pending header bytes that lie before the requested start offset.
    fn skip_hdr(&mut self) {
        let avail = self.hdr.len() - self.hdr_pos;
        // Bounded by `avail`, so it fits in usize.
        let s = self.skip.min(avail as u64) as usize;
        self.hdr_pos += s;
        self.skip -= s as u64;
        if self.hdr_pos == self.hdr.len() {
            self.hdr.clear();
            self.hdr_pos = 0;
        }
    }

    /// Advances the walk by one node: the root, the next entry of the innermost open
    /// directory, or the end of that directory.
    fn step(&mut self) -> Result<()> {
        if !self.started {
            self.started = true;
            put_str(&mut self.hdr, MAGIC);
            return self.emit_node();
        }
        let Some(frame) = self.frames[..self.depth].last_mut() else {
            // Every caller checks `done` first; the root's end sets it.
            self.done = true;
            return Ok(());
        };
        if frame.next < frame.spans.len() {
            let (start, end) = frame.spans[frame.next];
            frame.next += 1;
            let name = &frame.names[start..end];
            put_str(&mut self.hdr, b"entry");
            put_str(&mut self.hdr, b"(");
            put_str(&mut self.hdr, b"name");
            put_str(&mut self.hdr, name);
            put_str(&mut self.hdr, b"node");
            self.path.push(OsStr::from_bytes(name));
            self.emit_node()
        } else {
            put_str(&mut self.hdr, b")");
            self.depth -= 1;
            self.close_entry();
            Ok(())
        }
    }

    /// Writes the node at `self.path`. Directories are listed and opened (a frame is
    /// pushed); files with contents either start streaming or, if they lie wholly before
    /// the start offset, are skipped by size alone.
    fn emit_node(&mut self) -> Result<()> {
        let meta = fs::symlink_metadata(&self.path)
            .map_err(|e| Error::io(format!("lstat {}", self.path.display()), e))?;
        let ft = meta.file_type();
        put_str(&mut self.hdr, b"(");
        put_str(&mut self.hdr, b"type");
        if ft.is_file() {
            put_str(&mut self.hdr, b"regular");
            if meta.permissions().mode() & 0o100 != 0 {
                put_str(&mut self.hdr, b"executable");
                put_str(&mut self.hdr, b"");
            }
            put_str(&mut self.hdr, b"contents");
            let size = meta.len();
            self.hdr.extend_from_slice(&size.to_le_bytes());
            if size == 0 {
                self.end_contents(0);
                Ok(())
            } else {
                self.begin_contents(size)
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&self.path)
                .map_err(|e| Error::io(format!("readlink {}", self.path.display()), e))?;
            put_str(&mut self.hdr, b"symlink");
            put_str(&mut self.hdr, b"target");
            put_str(&mut self.hdr, target.as_os_str().as_bytes());
            put_str(&mut self.hdr, b")");
            self.close_entry();
            Ok(())
        } else if ft.is_dir() {
            put_str(&mut self.hdr, b"directory");
            self.open_dir()
        } else {
            debug_assert!(
                ft.is_socket() || ft.is_fifo() || ft.is_block_device() || ft.is_char_device()
            );
            Err(Error::UnsupportedFileType {
                path: self.path.clone(),
            })
        }
    }

    /// Lists the directory at `self.path` into a (reused) frame, sorted bytewise as Nix
    /// sorts `std::string`s.
    fn open_dir(&mut self) -> Result<()> {
        let ctx = || format!("listing {}", self.path.display());
        let rd = fs::read_dir(&self.path).map_err(|e| Error::io(ctx(), e))?;
        if self.depth == self.frames.len() {
            self.frames.push(DirFrame::default());
        }
        let frame = &mut self.frames[self.depth];
        frame.names.clear();
        frame.spans.clear();
        frame.next = 0;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(ctx(), e))?;
            let start = frame.names.len();
            frame.names.extend_from_slice(entry.file_name().as_bytes());
            frame.spans.push((start, frame.names.len()));
        }
        let names = &frame.names;
        frame
            .spans
            .sort_unstable_by(|a, b| names[a.0..a.1].cmp(&names[b.0..b.1]));
        self.depth += 1;
        Ok(())
    }

    fn begin_contents(&mut self, size: u64) -> Result<()> {
        self.skip_hdr();
        if self.skip >= size {
            // Wholly before the start offset: never opened.
            self.skip -= size;
            self.end_contents(size);
            return Ok(());
        }
        let mut file = File::open(&self.path)
            .map_err(|e| Error::io(format!("opening {}", self.path.display()), e))?;
        if self.skip > 0 {
            file.seek(SeekFrom::Start(self.skip))
                .map_err(|e| Error::io(format!("seeking in {}", self.path.display()), e))?;
        }
        self.file = Some(OpenFile {
            file,
            size,
            remaining: size - self.skip,
        });
        self.skip = 0;
        Ok(())
    }

    /// Padding after a file's contents and the end of its node.
    fn end_contents(&mut self, size: u64) {
        self.hdr.extend_from_slice(&[0u8; 8][..padding(size)]);
        put_str(&mut self.hdr, b")");
        self.close_entry();
    }

    /// After a node ends: closes the directory entry holding it, or ends the NAR at the root.
    fn close_entry(&mut self) {
        if self.depth == 0 {
            self.done = true;
        } else {
            put_str(&mut self.hdr, b")");
            self.path.pop();
        }
    }
}

impl Read for NarEncoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_nar(buf).map_err(io::Error::other)
    }
}

fn changed_size(path: &Path, size: u64, how: &str) -> Error {
    Error::io(
        format!("dumping {}", path.display()),
        io::Error::other(format!(
            "file {how} while being read (expected {size} bytes)"
        )),
    )
}

/// Dumps `path` into `w`, returning (sha256 of the NAR, NAR size).
pub fn dump(path: &Path, mut w: impl Write) -> Result<(Sha256Hash, u64)> {
    let mut enc = NarEncoder::new(path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut counter = HashingCounter::default();
    loop {
        let n = enc.read_nar(&mut buf)?;
        if n == 0 {
            break;
        }
        counter.update(&buf[..n]);
        w.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("writing the NAR of {}", path.display()), e))?;
    }
    w.flush()
        .map_err(|e| Error::io(format!("writing the NAR of {}", path.display()), e))?;
    Ok(counter.finish())
}

/// NAR size of `path` computed from metadata only (no file contents read).
pub fn nar_size(path: &Path) -> Result<u64> {
    // Skipping "everything" walks the whole tree by metadata and never opens a file; what
    // was actually skipped is the size.
    let mut enc = NarEncoder::new_at(path, u64::MAX)?;
    while !enc.done {
        enc.refill()?;
    }
    Ok(u64::MAX - enc.skip)
}
