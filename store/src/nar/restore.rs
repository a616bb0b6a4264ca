//! Unpacking a NAR into the file system (`nix-store --restore`), validating as it goes.
//!
//! Safety against hostile NARs comes from the parser: every name reaching the file system
//! has been checked (no `/`, `.`, `..`), entries are unique, and every object is created
//! with "must not exist" semantics, so nothing is ever written through a symlink.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::parse::{NarSummary, Parser, Sink, drive};
use crate::error::{Error, Result};

/// Unpacks a NAR from `r` into `dest` (which must not exist), validating as it goes.
/// Symlinks are created as symlinks (never followed); executables get their execute bits
/// (mode 0o777 minus the umask, like Nix), other files 0o666 minus the umask.
///
/// On error, whatever was created so far is left in place for the caller to remove.
pub fn restore(r: impl Read, dest: &Path) -> Result<NarSummary> {
    let mut parser = Parser::new(FsSink {
        path: dest.to_path_buf(),
        file: None,
    });
    drive(&mut parser, r)?;
    let (sink, summary) = parser.finish()?;
    debug_assert!(sink.file.is_none());
    Ok(summary)
}

/// Mirrors the parsed structure onto the file system under `path`.
#[derive(Debug)]
struct FsSink {
    /// The object being created: `dest` joined with the names of the open entries.
    path: PathBuf,
    file: Option<(File, bool)>,
}

impl FsSink {
    fn err(&self, what: &str, e: std::io::Error) -> Error {
        Error::io(format!("{what} {}", self.path.display()), e)
    }
}

impl Sink for FsSink {
    fn directory(&mut self) -> Result<()> {
        fs::create_dir(&self.path).map_err(|e| self.err("creating directory", e))
    }

    fn directory_end(&mut self) -> Result<()> {
        Ok(())
    }

    fn enter_entry(&mut self, name: &[u8]) -> Result<()> {
        self.path.push(OsStr::from_bytes(name));
        Ok(())
    }

    fn leave_entry(&mut self) -> Result<()> {
        self.path.pop();
        Ok(())
    }

    fn regular(&mut self, executable: bool, _size: u64) -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o777 } else { 0o666 })
            .open(&self.path)
            .map_err(|e| self.err("creating", e))?;
        self.file = Some((file, executable));
        Ok(())
    }

    fn contents(&mut self, data: &[u8]) -> Result<()> {
        match self.file.as_mut() {
            Some((f, _)) => f.write_all(data).map_err(|e| self.err("writing", e)),
            // The parser announces every file before its contents.
            None => Ok(()),
        }
    }

    fn regular_end(&mut self) -> Result<()> {
        let Some((file, executable)) = self.file.take() else {
            return Ok(());
        };
        if executable {
            // A umask that strips the owner's execute bit would make the NAR of the
            // restored tree differ; Nix checks only that bit.
            let meta = file.metadata().map_err(|e| self.err("stat", e))?;
            let mode = meta.permissions().mode();
            if mode & 0o100 == 0 {
                file.set_permissions(fs::Permissions::from_mode(mode | 0o100))
                    .map_err(|e| self.err("chmod", e))?;
            }
        }
        Ok(())
    }

    fn symlink(&mut self, target: &[u8]) -> Result<()> {
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &self.path)
            .map_err(|e| self.err("creating symlink", e))
    }
}
