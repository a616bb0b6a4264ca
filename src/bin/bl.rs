//! `bl`: a thin entry point over [`tailcache::cli`] (see there and the README).

fn main() -> std::process::ExitCode {
    tailcache::cli::run_bl()
}
