//! What the agent measures to choose an encoding ([`crate::choose`]): the goodput of its link
//! when fetching NAR files (from the server and from peers), and how fast this machine
//! decodes zstd and xz.
//!
//! Goodput is NAR-file bytes received per second of wall time during which at least one
//! download ran ([`LinkMeter`], pure: time is an argument), one meter per [`Route`]. Counting busy time rather than
//! each download's own rate matters: Nix fetches many paths at once, and per-download rates
//! would each see a share of the link. Samples of at least [`MIN_SAMPLE_BYTES`] (small
//! downloads add up) are folded into a moving average.
//!
//! Decoding speeds are calibrated on a blocking thread over a generated sample that mixes
//! text-like, table-like and random data compressed with the same libraries and settings the
//! server uses (zstd 3, xz 6); the fastest of some rounds counts.
//!
//! Both are kept in the cache directory ([`MEASUREMENTS_FILE`]) whenever they change, so a
//! restarted agent chooses from its first narinfo instead of passing the server's choice on
//! until it has measured a megabyte again, and does not spend its first half second of CPU
//! calibrating while Nix is already fetching: with speeds remembered, the calibration waits
//! until the agent has been idle a while ([`Measurements::calibrate_when_idle`]). A remembered
//! goodput stands only until the first sample of the new run replaces it (not averaged with
//! it: the machine may be on another link by now).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::choose::{DecodeSpeeds, Measured};

/// A sample is folded once it holds this many bytes…
pub const MIN_SAMPLE_BYTES: u64 = 1 << 20;
/// …at the end of a busy stretch, or within one once it lasted this long.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// Weight of a new sample in the moving average.
const EWMA_WEIGHT: f64 = 0.3;

/// The link's goodput, from downloads that begin, receive bytes and end.
#[derive(Debug, Default)]
pub struct LinkMeter {
    active: usize,
    /// Start of the busy time not yet added to `busy`.
    since: Option<Instant>,
    busy: Duration,
    bytes: u64,
    goodput: Option<f64>,
    /// `goodput` comes from an earlier run: the first sample replaces it.
    remembered: bool,
}

impl LinkMeter {
    pub fn begin(&mut self, now: Instant) {
        if self.active == 0 {
            self.since = Some(now);
        }
        self.active += 1;
    }

    pub fn received(&mut self, bytes: u64, now: Instant) {
        self.bytes += bytes;
        if self.busy_at(now) >= SAMPLE_PERIOD {
            self.fold(now);
        }
    }

    pub fn end(&mut self, now: Instant) {
        self.active = self.active.saturating_sub(1);
        if self.active == 0 {
            self.fold(now);
            if let Some(since) = self.since.take() {
                self.busy += now.saturating_duration_since(since);
            }
        }
    }

    /// Bytes per second, once a sample was folded (or remembered).
    pub fn goodput(&self) -> Option<f64> {
        self.goodput
    }

    /// Starts from a goodput an earlier run measured, when this one has measured none yet.
    pub fn remember(&mut self, goodput: f64) {
        if self.goodput.is_none() && goodput.is_finite() && goodput > 0.0 {
            self.goodput = Some(goodput);
            self.remembered = true;
        }
    }

    fn busy_at(&self, now: Instant) -> Duration {
        self.busy
            + self
                .since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// Folds the open sample into the average if it is big enough, and starts a new one.
    fn fold(&mut self, now: Instant) {
        let busy = self.busy_at(now).as_secs_f64();
        if self.bytes < MIN_SAMPLE_BYTES || busy <= 0.0 {
            return;
        }
        let sample = self.bytes as f64 / busy;
        self.goodput = Some(match self.goodput {
            Some(g) if !self.remembered => g + EWMA_WEIGHT * (sample - g),
            _ => sample,
        });
        self.remembered = false;
        self.bytes = 0;
        self.busy = Duration::ZERO;
        if self.since.is_some() {
            self.since = Some(now);
        }
    }
}

/// The way a NAR file arrives, each with a meter of its own (see [`Measured`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A compressed file fetched in verified pieces, from peers and the server; paced by the
    /// link, not by Nix (the response reads the partial file at its own pace).
    Pieces,
    /// The uncompressed NAR proxied from the server, as fast as Nix takes it (a compressed
    /// body would be paced by Nix's decoding, so none is measured).
    Uncompressed,
}

/// The agent's measurements, shared by every request: cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    pieces: Arc<Mutex<LinkMeter>>,
    uncompressed: Arc<Mutex<LinkMeter>>,
    decode: Arc<Mutex<DecodeSpeeds>>,
    /// Woken when a measurement changes (the keeper of [`MEASUREMENTS_FILE`] waits on it).
    changed: Arc<Notify>,
}

/// One download while it runs; ends when dropped.
#[derive(Debug)]
pub struct Transfer {
    link: Arc<Mutex<LinkMeter>>,
    changed: Arc<Notify>,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        update(&self.link, &self.changed, |m| m.end(Instant::now()));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Applies `f` to the meter, and tells `changed` when that moved its goodput.
fn update(link: &Mutex<LinkMeter>, changed: &Notify, f: impl FnOnce(&mut LinkMeter)) {
    let mut m = lock(link);
    let before = m.goodput();
    f(&mut m);
    if m.goodput() != before {
        changed.notify_one();
    }
}

/// The file in the agent's cache directory that keeps the measurements across restarts.
pub const MEASUREMENTS_FILE: &str = "measurements.toml";

/// With decoding speeds remembered, how long the agent must have been idle (no download
/// running) before it calibrates them again.
pub const RECALIBRATE_IDLE: Duration = Duration::from_secs(60);

/// What [`MEASUREMENTS_FILE`] holds, in bytes per second: the goodput of each route, and
/// the decoding speeds (NAR bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remembered {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd_decode: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xz_decode: Option<f64>,
}

impl Remembered {
    /// The measurements `path` keeps; a missing file is nothing remembered, an unreadable or
    /// malformed one too (with a warning: it is rewritten at the next measurement), and so
    /// is any value that is not a positive number.
    pub fn read(path: &Path) -> Remembered {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Remembered::default(),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", path.display());
                return Remembered::default();
            }
        };
        let r: Remembered = toml::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!("ignoring {}: {e}", path.display());
            Remembered::default()
        });
        let speed = |v: Option<f64>| v.filter(|v| v.is_finite() && *v > 0.0);
        Remembered {
            pieces: speed(r.pieces),
            uncompressed: speed(r.uncompressed),
            zstd_decode: speed(r.zstd_decode),
            xz_decode: speed(r.xz_decode),
        }
    }

    /// Writes the measurements to `path` whole or not at all (a temporary file renamed over
    /// it).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = format!(
            "# What tailcache's agent last measured (bytes per second): the goodput of its\n\
             # link and its decoding speeds, the starting point of its choice of encoding\n\
             # after a restart.\n{}",
            toml::to_string(self).map_err(std::io::Error::other)?
        );
        let tmp = path.with_extension("toml.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

impl Measurements {
    fn meter(&self, route: Route) -> &Arc<Mutex<LinkMeter>> {
        match route {
            Route::Pieces => &self.pieces,
            Route::Uncompressed => &self.uncompressed,
        }
    }

    /// A download begins; it ends when the returned guard is dropped.
    pub fn transfer(&self, route: Route) -> Transfer {
        let link = self.meter(route).clone();
        lock(&link).begin(Instant::now());
        Transfer {
            link,
            changed: self.changed.clone(),
        }
    }

    /// NAR-file bytes received by a running download.
    pub fn received(&self, route: Route, bytes: u64) {
        update(self.meter(route), &self.changed, |m| {
            m.received(bytes, Instant::now())
        });
    }

    /// The measurements as [`MEASUREMENTS_FILE`] keeps them.
    pub fn remembered(&self) -> Remembered {
        let decode = *lock(&self.decode);
        Remembered {
            pieces: lock(&self.pieces).goodput(),
            uncompressed: lock(&self.uncompressed).goodput(),
            zstd_decode: decode.zstd,
            xz_decode: decode.xz,
        }
    }

    /// Whether no download is running.
    fn idle(&self) -> bool {
        lock(&self.pieces).active == 0 && lock(&self.uncompressed).active == 0
    }

    /// Starts from what `path` remembers (before anything is measured), and returns the
    /// task that writes them back there each time they change, for the agent's life.
    pub fn keep_in(&self, path: PathBuf) -> impl Future<Output = ()> + Send + 'static {
        let r = Remembered::read(&path);
        for (route, goodput) in [
            (Route::Pieces, r.pieces),
            (Route::Uncompressed, r.uncompressed),
        ] {
            if let Some(g) = goodput {
                lock(self.meter(route)).remember(g);
            }
        }
        if r.zstd_decode.is_some() || r.xz_decode.is_some() {
            *lock(&self.decode) = DecodeSpeeds {
                zstd: r.zstd_decode,
                xz: r.xz_decode,
            };
        }
        let this = self.clone();
        let mut saved = self.remembered();
        async move {
            loop {
                this.changed.notified().await;
                let now = this.remembered();
                if now == saved {
                    continue;
                }
                let p = path.clone();
                match tokio::task::spawn_blocking(move || now.write(&p)).await {
                    Ok(Ok(())) => saved = now,
                    Ok(Err(e)) => tracing::warn!("cannot write {}: {e}", path.display()),
                    Err(e) => tracing::warn!("writing {}: {e}", path.display()),
                }
            }
        }
    }

    /// Calibrates the decoding speeds on a blocking thread: at once when none are known, else
    /// (they were remembered) once the agent has been idle for [`RECALIBRATE_IDLE`], so the
    /// half second of CPU is not taken from a running substitution.
    pub async fn calibrate_when_idle(&self) {
        if *lock(&self.decode) != DecodeSpeeds::default() {
            let mut idle_since = None;
            loop {
                let now = tokio::time::Instant::now();
                if !self.idle() {
                    idle_since = None;
                } else if now.duration_since(*idle_since.get_or_insert(now)) >= RECALIBRATE_IDLE {
                    break;
                }
                tokio::time::sleep(RECALIBRATE_IDLE / 12).await;
            }
        }
        match tokio::task::spawn_blocking(calibrate).await {
            Ok(speeds) => {
                let mb = |s: Option<f64>| s.map_or("?".into(), |s| format!("{:.0}", s / 1e6));
                tracing::info!(
                    "decoding speeds: zstd {} MB/s, xz {} MB/s",
                    mb(speeds.zstd),
                    mb(speeds.xz)
                );
                *lock(&self.decode) = speeds;
                self.changed.notify_one();
            }
            Err(e) => tracing::warn!("decoding speed calibration failed: {e}"),
        }
    }

    pub fn snapshot(&self) -> Measured {
        Measured {
            goodput: lock(&self.pieces).goodput(),
            uncompressed_goodput: lock(&self.uncompressed).goodput(),
            decode: *lock(&self.decode),
        }
    }
}

/// Size of the calibration sample: xz -6 makes its file in about 0.2 s of one core.
const SAMPLE_BYTES: usize = 1 << 20;
/// Decoding rounds per compression: at least the first, as many as fit the second (zstd
/// decodes the sample in about a millisecond), at most the third; the fastest counts (the
/// others met a busy machine).
const ROUNDS: (usize, Duration, usize) = (3, Duration::from_millis(100), 64);

/// Measures this machine's decoding speeds (blocking: about half a second of one core).
pub fn calibrate() -> DecodeSpeeds {
    let sample = sample(SAMPLE_BYTES);
    DecodeSpeeds {
        zstd: best_speed(&sample, zstd::encode_all(&sample[..], 3), decode_zstd),
        xz: best_speed(&sample, xz_encode(&sample), decode_xz),
    }
}

/// NAR bytes per second of the fastest of some decodings ([`ROUNDS`]) of `encoded`.
fn best_speed(
    sample: &[u8],
    encoded: std::io::Result<Vec<u8>>,
    decode: fn(&[u8]) -> std::io::Result<u64>,
) -> Option<f64> {
    let encoded = encoded
        .map_err(|e| tracing::warn!("calibration sample: {e}"))
        .ok()?;
    let (min_rounds, budget, max_rounds) = ROUNDS;
    let began = Instant::now();
    let mut best: Option<f64> = None;
    for round in 0..max_rounds {
        if round >= min_rounds && began.elapsed() >= budget {
            break;
        }
        let started = Instant::now();
        let n = decode(&encoded)
            .map_err(|e| tracing::warn!("calibration decoding: {e}"))
            .ok()?;
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        if n != sample.len() as u64 {
            tracing::warn!("calibration decoded {n} bytes instead of {}", sample.len());
            return None;
        }
        let speed = n as f64 / secs;
        best = Some(best.map_or(speed, |b| b.max(speed)));
    }
    best
}

fn decode_zstd(encoded: &[u8]) -> std::io::Result<u64> {
    std::io::copy(&mut zstd::Decoder::new(encoded)?, &mut std::io::sink())
}

fn decode_xz(encoded: &[u8]) -> std::io::Result<u64> {
    std::io::copy(
        &mut liblzma::read::XzDecoder::new(encoded),
        &mut std::io::sink(),
    )
}

fn xz_encode(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    liblzma::read::XzEncoder::new(data, 6).read_to_end(&mut out)?;
    Ok(out)
}

/// `len` bytes shaped like the files of a store: runs of words (text, scripts), of small
/// integers with small steps (tables, code), and of random bytes (compressed data), 4 KiB
/// each, from a fixed seed.
pub fn sample(len: usize) -> Vec<u8> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let words: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            let n = 2 + rng.below(9) as usize;
            (0..n).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 4096);
    while out.len() < len {
        let end = out.len() + 4096;
        match rng.below(10) {
            0..=5 => {
                while out.len() < end {
                    // Zipf-like: frequent words are frequent.
                    let i = (rng.below(512) * rng.below(512) / 512) as usize;
                    out.extend_from_slice(&words[i]);
                    out.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
                }
            }
            6..=8 => {
                let mut v = rng.below(1 << 16) as u32;
                while out.len() < end {
                    v = v.wrapping_add(rng.below(64) as u32);
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            _ => {
                while out.len() < end {
                    out.extend_from_slice(&rng.next().to_le_bytes());
                }
            }
        }
    }
    out.truncate(len);
    out
}

/// A small deterministic generator: the sample must be the same on every machine.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn goodput_is_bytes_over_busy_time_not_per_download() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = LinkMeter::default();
        assert_eq!(m.goodput(), None);
        // Two downloads overlap: 8 MiB in 500 ms of busy time, whatever each one saw.
        m.begin(s(0));
        m.begin(s(100));
        m.received(4 * MIB, s(300));
        m.end(s(300));
        m.received(4 * MIB, s(500));
        m.end(s(500));
        assert_eq!(m.goodput(), Some(16.0 * MIB as f64));
        // Idle time between downloads does not count: 2 MiB in 1 s of busy time.
        m.begin(s(10_000));
        m.received(2 * MIB, s(11_000));
        m.end(s(11_000));
        let g = m.goodput().unwrap();
        let want = 16.0 * MIB as f64 + EWMA_WEIGHT * (2.0 * MIB as f64 - 16.0 * MIB as f64);
        assert!((g - want).abs() < 1.0, "{g} vs {want}");
    }

    #[test]
    fn small_downloads_add_up_to_a_sample() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = LinkMeter::default();
        for i in 0..4 {
            m.begin(s(i * 1000));
            m.received(MIB / 4, s(i * 1000 + 50));
            m.end(s(i * 1000 + 50));
            if i < 3 {
                assert_eq!(m.goodput(), None, "{i}: too small a sample");
            }
        }
        // 1 MiB over 4 × 50 ms.
        assert_eq!(m.goodput(), Some(5.0 * MIB as f64));
    }

    #[test]
    fn a_long_download_is_sampled_while_it_runs() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = LinkMeter::default();
        m.begin(s(0));
        m.received(MIB, s(500));
        assert_eq!(m.goodput(), None);
        m.received(MIB, s(1000));
        assert_eq!(m.goodput(), Some(2.0 * MIB as f64));
        // The next sample starts where that one ended: 10 MiB in the next second.
        m.received(10 * MIB, s(2000));
        let want = 2.0 * MIB as f64 + EWMA_WEIGHT * 8.0 * MIB as f64;
        assert!((m.goodput().unwrap() - want).abs() < 1.0);
        m.end(s(2000));
        assert!((m.goodput().unwrap() - want).abs() < 1.0);
    }

    #[test]
    fn a_remembered_goodput_stands_until_the_first_sample_replaces_it() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = LinkMeter::default();
        m.remember(100.0 * MIB as f64);
        assert_eq!(m.goodput(), Some(100.0 * MIB as f64));
        // Replaced, not averaged: 2 MiB in 1 s is the link now.
        m.begin(s(0));
        m.received(2 * MIB, s(1000));
        assert_eq!(m.goodput(), Some(2.0 * MIB as f64));
        // Later samples average as usual.
        m.received(4 * MIB, s(2000));
        let want = 2.0 * MIB as f64 + EWMA_WEIGHT * 2.0 * MIB as f64;
        assert!((m.goodput().unwrap() - want).abs() < 1.0);
        // Nothing overrides a measurement, and nonsense is not remembered.
        m.remember(1.0);
        assert!((m.goodput().unwrap() - want).abs() < 1.0);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut fresh = LinkMeter::default();
            fresh.remember(bad);
            assert_eq!(fresh.goodput(), None, "{bad}");
        }
    }

    #[test]
    fn the_file_round_trips_and_bad_values_are_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MEASUREMENTS_FILE);
        assert_eq!(Remembered::read(&path), Remembered::default());
        let r = Remembered {
            pieces: Some(12_345_678.5),
            uncompressed: None,
            zstd_decode: Some(1.1e9),
            xz_decode: Some(8e7),
        };
        r.write(&path).unwrap();
        assert_eq!(Remembered::read(&path), r);
        assert!(!path.with_extension("toml.tmp").exists());
        for bad in ["pieces = \"fast\"", "speed = 3.0", "\u{0}"] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(Remembered::read(&path), Remembered::default(), "{bad}");
        }
        std::fs::write(&path, "pieces = -1.0\nxz_decode = 0.0\nzstd_decode = 5e8\n").unwrap();
        let only_zstd = Remembered {
            zstd_decode: Some(5e8),
            ..Remembered::default()
        };
        assert_eq!(Remembered::read(&path), only_zstd);
    }

    #[tokio::test]
    async fn measurements_start_from_the_file_and_write_it_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MEASUREMENTS_FILE);
        let kept = Remembered {
            pieces: Some(5e6),
            uncompressed: Some(7e6),
            zstd_decode: Some(1e9),
            xz_decode: None,
        };
        kept.write(&path).unwrap();
        let m = Measurements::default();
        let keeper = tokio::spawn(m.keep_in(path.clone()));
        assert_eq!(m.remembered(), kept);
        assert_eq!(m.snapshot().goodput, Some(5e6));
        assert_eq!(m.snapshot().decode.zstd, Some(1e9));
        {
            let _t = m.transfer(Route::Pieces);
            std::thread::sleep(Duration::from_millis(5));
            m.received(Route::Pieces, 2 * MIB);
        }
        let measured = m.snapshot().goodput.unwrap();
        assert_ne!(measured, 5e6);
        // The keeper writes it (on a blocking thread): poll the file.
        let deadline = Instant::now() + Duration::from_secs(30);
        let want = Remembered {
            pieces: Some(measured),
            ..kept
        };
        while Remembered::read(&path) != want {
            assert!(Instant::now() < deadline, "{:?}", Remembered::read(&path));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        keeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn remembered_speeds_are_recalibrated_only_after_a_minute_idle() {
        let m = Measurements::default();
        *lock(&m.decode) = DecodeSpeeds {
            zstd: Some(1.0),
            xz: Some(1.0),
        };
        let busy = m.transfer(Route::Pieces);
        let task = tokio::spawn({
            let m = m.clone();
            async move { m.calibrate_when_idle().await }
        });
        // Busy for ten minutes (paused time): nothing calibrated.
        tokio::time::sleep(10 * RECALIBRATE_IDLE).await;
        assert_eq!(m.snapshot().decode.zstd, Some(1.0));
        drop(busy);
        // Idle long enough: calibrated (real decoding on a blocking thread).
        task.await.unwrap();
        assert_ne!(m.snapshot().decode.zstd, Some(1.0));
        assert!(m.snapshot().decode.xz.unwrap() > 1.0);
    }

    #[test]
    fn transfers_feed_the_shared_meter() {
        let m = Measurements::default();
        assert_eq!(m.snapshot(), Measured::default());
        {
            let _t = m.transfer(Route::Pieces);
            // Real time passes: the shared meter reads the clock itself.
            std::thread::sleep(Duration::from_millis(5));
            m.received(Route::Pieces, 2 * MIB);
        }
        let snapshot = m.snapshot();
        let g = snapshot.goodput.unwrap();
        // 2 MiB in at least 5 ms: at most 400 MiB/s, and positive.
        assert!(g > 0.0 && g <= 2.0 * MIB as f64 / 0.005, "{g}");
        assert_eq!(
            snapshot.uncompressed_goodput, None,
            "the other route's meter"
        );
    }

    #[test]
    fn the_sample_is_fixed_and_compresses_like_store_files() {
        let a = sample(1 << 20);
        assert_eq!(a, sample(1 << 20));
        assert_eq!(a.len(), 1 << 20);
        let ratio = |c: usize| c as f64 / a.len() as f64;
        let zstd = ratio(zstd::encode_all(&a[..], 3).unwrap().len());
        let xz = ratio(xz_encode(&a).unwrap().len());
        // Neither incompressible nor trivial; xz smaller than zstd, as on real closures.
        assert!((0.15..0.7).contains(&zstd), "zstd ratio {zstd}");
        assert!(xz < zstd, "xz {xz} zstd {zstd}");
    }

    #[test]
    fn calibration_measures_both_decoders() {
        let s = calibrate();
        let (zstd, xz) = (s.zstd.unwrap(), s.xz.unwrap());
        assert!(zstd > 0.0 && xz > 0.0, "{s:?}");
    }
}
