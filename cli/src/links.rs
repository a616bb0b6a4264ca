//! One binary, four names: `bt`, `bs` and `bl` are symbolic links to `tailcache`, which
//! looks at the name it was started under ([`Program::invoked_as`]) and runs that program.
//! `cargo install` can only install files, so `tailcache install-links [DIR]` makes the links
//! (the Nix package makes them itself).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{CliError, Program, exit};

/// The names that are links to `tailcache`.
pub const LINKED: [Program; 3] = [Program::Bt, Program::Bs, Program::Bl];

impl Program {
    /// The program a process started as `arg0` runs: `bt`, `bs` or `bl` by the file name of
    /// `arg0` (however it was reached: `bt`, `~/.cargo/bin/bt`, a link's path), else
    /// `tailcache`.
    pub fn invoked_as(arg0: Option<&OsStr>) -> Program {
        let name = arg0.and_then(|a| Path::new(a).file_name());
        LINKED
            .into_iter()
            .find(|p| name == Some(OsStr::new(p.name())))
            .unwrap_or(Program::Tailcache)
    }
}

/// `tailcache install-links`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallLinksArgs {
    /// Where to make the links [default: the directory this binary is in].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Replace files of those names that are not already links to this binary.
    #[arg(long)]
    pub force: bool,
}

/// Makes `DIR/bt`, `DIR/bs` and `DIR/bl` links to this binary. A link that is already
/// there and right is left alone; anything else of that name is replaced only with
/// `--force`, and then atomically (a new link renamed over it).
pub fn install(a: &InstallLinksArgs) -> Result<u8, CliError> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| CliError::local("finding this binary", e))?;
    let exe_dir = exe.parent().unwrap_or(Path::new("/"));
    let dir = a.dir.clone().unwrap_or_else(|| exe_dir.to_path_buf());
    let dir =
        std::fs::canonicalize(&dir).map_err(|e| CliError::local(dir.display().to_string(), e))?;
    // Beside the binary a relative link, so the directory can move as a whole.
    let target = match exe.file_name() {
        Some(name) if dir == exe_dir => PathBuf::from(name),
        _ => exe.clone(),
    };
    let mut made = Vec::new();
    for program in LINKED {
        let link = dir.join(program.name());
        if points_to(&link, &exe) {
            continue;
        }
        if std::fs::symlink_metadata(&link).is_ok() && !a.force {
            return Err(CliError::NotConfirmed(format!(
                "{} exists and is not a link to {}; pass --force to replace it",
                link.display(),
                exe.display()
            )));
        }
        replace_with_link(&link, &target)?;
        made.push(program.name());
    }
    if made.is_empty() {
        println!(
            "bt, bs and bl in {} already run {}",
            dir.display(),
            exe.display()
        );
    } else {
        println!(
            "linked {} in {} to {}",
            made.join(", "),
            dir.display(),
            exe.display()
        );
    }
    Ok(exit::OK)
}

/// Whether `link` resolves to the binary `exe` (already canonical).
fn points_to(link: &Path, exe: &Path) -> bool {
    std::fs::symlink_metadata(link).is_ok_and(|m| m.file_type().is_symlink())
        && std::fs::canonicalize(link).is_ok_and(|t| t == exe)
}

fn replace_with_link(link: &Path, target: &Path) -> Result<(), CliError> {
    let tmp = link.with_file_name(format!(
        ".{}.tailcache-link-{}",
        link.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, link))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CliError::local(format!("linking {}", link.display()), e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_decides_the_program() {
        let of = |s: &str| Program::invoked_as(Some(OsStr::new(s)));
        assert_eq!(of("bt"), Program::Bt);
        assert_eq!(of("/home/a/.cargo/bin/bs"), Program::Bs);
        assert_eq!(of("./bl"), Program::Bl);
        assert_eq!(of("tailcache"), Program::Tailcache);
        assert_eq!(
            of("/nix/store/x-tailcache/bin/tailcache"),
            Program::Tailcache
        );
        assert_eq!(of("bt-old"), Program::Tailcache);
        assert_eq!(of("/usr/bin/bt/"), Program::Bt);
        assert_eq!(Program::invoked_as(None), Program::Tailcache);
    }
}
