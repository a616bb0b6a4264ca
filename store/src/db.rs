//! Read-only access to a local Nix store's SQLite database (`<root>/nix/var/nix/db/db.sqlite`,
//! schema of Nix 2.x: `ValidPaths`, `Refs`, `DerivationOutputs`), for the real store (root `/`)
//! and for a store under another root (what `nix --store DIR` creates).
//!
//! # Never get in Nix's way
//! Connections are opened with `SQLITE_OPEN_READ_ONLY`, so SQLite itself refuses every write;
//! no pragma is issued. Each lookup is one short read transaction (two indexed statements at
//! most), so a WAL reader never pins a snapshot that would stall Nix's checkpoints, and idle
//! pooled connections hold no snapshot at all. A busy timeout of two seconds covers the rare
//! moments (WAL recovery) when a reader has to wait.
//!
//! # Reading a WAL database you may not write next to
//! A reader of a WAL database needs the `db.sqlite-shm` file. If no Nix process has the
//! database open, that file does not exist, and SQLite can only create it when the directory is
//! writable by the caller. [`StoreDb::open`] therefore fails with a clear [`Error::Db`] for a
//! read-only copy of a store that nothing has open (or for an unprivileged user reading
//! `/nix/var/nix/db` while Nix is idle). For a store that nothing modifies (a snapshot, a
//! read-only copy) [`StoreDb::open_immutable`] reads the file with SQLite's `immutable=1`, which
//! needs no `-shm` file but must never be used on a database that Nix may still write: SQLite
//! would ignore the WAL and could read half-written pages.
//!
//! # Has anything changed?
//! [`StoreDb::data_version`] reads the WAL-index header from `db.sqlite-shm` — the header
//! SQLite's own readers compare to know whether their page cache is still current (it changes
//! with every commit, checkpoint reset and recovery) — with one `pread`, no lock and no
//! transaction, so a cache of what was read can be checked on every request.
//!
//! A read-only connection may not checkpoint, so when one of ours is the last to close, the
//! `-wal` and `-shm` files stay; Nix checkpoints them the next time it opens the database.
//!
//! # Rows that are not what Nix writes
//! A row whose path, deriver or references do not parse as store paths of this store (or
//! whose hash is not `sha256:<base16>`, or whose size is negative) makes the lookup of *that*
//! path return `Err(Error::Db { source: FromSqlConversionFailure(..), .. })`; nothing panics and
//! other paths are unaffected. Dropping only the bad reference would be worse: the narinfo
//! would advertise an incomplete closure, and its signature would cover the wrong references.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{Type, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, Row};

use crate::error::{Error, Result};
use crate::hash::Sha256Hash;
use crate::path_info::PathInfo;
use crate::store_path::{DEFAULT_STORE_DIR, StorePath, StorePathHash};

/// Idle connections kept for reuse; more are opened under load and closed when returned.
pub const DEFAULT_MAX_IDLE: usize = 8;
/// How long a statement waits for a lock before failing with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a store lives: logical store dir (what paths say, "/nix/store") and the physical root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLayout {
    pub store_dir: String,
    pub root: PathBuf,
}

impl StoreLayout {
    /// The machine's own store: `/nix/store`, database in `/nix/var/nix/db`.
    pub fn system() -> Self {
        Self::under_root("/")
    }

    /// A store under another root directory, as `nix --store DIR` creates it.
    pub fn under_root(root: impl Into<PathBuf>) -> Self {
        StoreLayout {
            store_dir: DEFAULT_STORE_DIR.to_owned(),
            root: root.into(),
        }
    }

    /// Where the store directory is on disk: root + store_dir.
    pub fn physical_store_dir(&self) -> PathBuf {
        // `join` with an absolute path would replace the root, so the store dir is made relative.
        self.root.join(self.store_dir.trim_start_matches('/'))
    }

    /// Where a store path's contents are on disk.
    pub fn physical_path(&self, p: &StorePath) -> PathBuf {
        self.physical_store_dir().join(p.base_name())
    }

    /// `root/nix/var/nix/db/db.sqlite`.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("nix/var/nix/db/db.sqlite")
    }

    /// `root/nix/var/log/nix/drvs`, where Nix keeps build logs.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("nix/var/log/nix/drvs")
    }
}

/// How connections read the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Normal read-only WAL reader: sees Nix's writes as they commit.
    Shared,
    /// `immutable=1`: no locks, no `-shm`; only for a database nothing writes.
    Immutable,
}

/// Size of the WAL-index header: `db.sqlite-shm` begins with two copies of it.
const WAL_INDEX_HEADER: usize = 48;

/// The database as of its last commit: two equal versions read at two moments mean that
/// nothing was committed in between. See [`StoreDb::data_version`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataVersion([u8; WAL_INDEX_HEADER]);

/// A small pool of read-only connections; cheap to clone (Arc inside), Send + Sync.
#[derive(Clone)]
pub struct StoreDb {
    inner: Arc<Inner>,
}

struct Inner {
    layout: StoreLayout,
    db_path: PathBuf,
    mode: Mode,
    max_idle: usize,
    idle: Mutex<Vec<Connection>>,
    /// `db.sqlite-shm`, opened on the first [`StoreDb::data_version`].
    shm: Mutex<Option<Arc<File>>>,
}

impl fmt::Debug for StoreDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreDb")
            .field("layout", &self.inner.layout)
            .field("db_path", &self.inner.db_path)
            .field("mode", &self.inner.mode)
            .field("idle", &self.idle_connections())
            .finish()
    }
}

/// The `path` column's unique index is ordered by BINARY collation, so `<dir>/<hash>-` ..
/// `<dir>/<hash>.` (`.` follows `-` in ASCII) is exactly the set of paths with that hash part.
const BY_HASH_PART: &str = "SELECT id, path, hash, registrationTime, deriver, narSize, sigs, ca \
     FROM ValidPaths WHERE path >= ?1 AND path < ?2 LIMIT 1";
/// There is no index on `hash`: this is a full scan (a few ms for 100k paths).
const BY_NAR_HASH: &str = "SELECT id, path, hash, registrationTime, deriver, narSize, sigs, ca \
     FROM ValidPaths WHERE hash = ?1 ORDER BY id LIMIT 1";
const REFERENCES: &str = "SELECT p.path FROM Refs r JOIN ValidPaths p ON p.id = r.reference \
     WHERE r.referrer = ?1";
const DRV_OUTPUTS: &str = "SELECT o.id, o.path FROM DerivationOutputs o \
     JOIN ValidPaths v ON v.id = o.drv WHERE v.path = ?1 ORDER BY o.id";
const ALL_PATHS: &str = "SELECT path FROM ValidPaths ORDER BY path";

impl StoreDb {
    /// Opens the store's database for reading while Nix may be writing it.
    ///
    /// One connection is opened and the queries are compiled against the schema, so a missing
    /// file, a file that is not a Nix database, or a `-shm` file that cannot be created fail
    /// here, at start-up, rather than on the first request. Further connections are opened
    /// lazily.
    pub fn open(layout: &StoreLayout) -> Result<Self> {
        Self::open_mode(layout, Mode::Shared, DEFAULT_MAX_IDLE)
    }

    /// Opens a database that nothing modifies (a snapshot or read-only copy of a store) with
    /// SQLite's `immutable=1`: works without write access to the directory, but would read
    /// garbage if Nix wrote the database meanwhile. See the module documentation.
    pub fn open_immutable(layout: &StoreLayout) -> Result<Self> {
        Self::open_mode(layout, Mode::Immutable, DEFAULT_MAX_IDLE)
    }

    /// Like [`StoreDb::open`], keeping at most `max_idle` idle connections.
    pub fn open_with_max_idle(layout: &StoreLayout, max_idle: usize) -> Result<Self> {
        Self::open_mode(layout, Mode::Shared, max_idle)
    }

    fn open_mode(layout: &StoreLayout, mode: Mode, max_idle: usize) -> Result<Self> {
        let db_path = layout.db_path();
        match db_path.try_exists() {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::io(
                    format!(
                        "store database {} does not exist (is {} the root of a Nix store?)",
                        db_path.display(),
                        layout.root.display()
                    ),
                    std::io::ErrorKind::NotFound.into(),
                ));
            }
            Err(e) => {
                return Err(Error::io(
                    format!("cannot access store database {}", db_path.display()),
                    e,
                ));
            }
        }
        let db = StoreDb {
            inner: Arc::new(Inner {
                layout: layout.clone(),
                db_path,
                mode,
                max_idle,
                idle: Mutex::new(Vec::new()),
                shm: Mutex::new(None),
            }),
        };
        db.with_conn(|conn| {
            for sql in [BY_HASH_PART, BY_NAR_HASH, REFERENCES, DRV_OUTPUTS] {
                conn.prepare_cached(sql)?;
            }
            Ok(())
        })
        .map_err(|e| db.explain_open_error(e))?;
        Ok(db)
    }

    pub fn layout(&self) -> &StoreLayout {
        &self.inner.layout
    }

    /// The database file this handle reads.
    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    /// How many connections are idle in the pool right now.
    pub fn idle_connections(&self) -> usize {
        self.inner.lock_idle().len()
    }

    /// The database's version now; `None` when it cannot be told (no WAL, no `-shm` file, or
    /// a header being written this instant), in which case nothing read may be reused.
    ///
    /// Read *before* a lookup, a version vouches for what the lookup returns for as long as
    /// the version read later is equal: a commit after this call changes the version, even
    /// when it lands before the lookup's own transaction. A database opened with
    /// [`StoreDb::open_immutable`] never changes: its version is constant.
    pub fn data_version(&self) -> Option<DataVersion> {
        if self.inner.mode == Mode::Immutable {
            return Some(DataVersion([0; WAL_INDEX_HEADER]));
        }
        let shm = self.shm_file()?;
        let mut buf = [0u8; 2 * WAL_INDEX_HEADER];
        shm.read_exact_at(&mut buf, 0).ok()?;
        let (first, second) = buf.split_at(WAL_INDEX_HEADER);
        // SQLite writes the second copy, then the first: equal copies (read first to second)
        // are one consistent header. Byte 12 is `isInit`: 0 while the index is rebuilt.
        if first != second || first[12] != 1 {
            return None;
        }
        Some(DataVersion(first.try_into().ok()?))
    }

    /// The open `-shm` file, reopened when it was deleted or replaced (a file without links
    /// would never change again).
    fn shm_file(&self) -> Option<Arc<File>> {
        let mut slot = self.inner.shm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = slot.as_ref()
            && f.metadata().is_ok_and(|m| m.nlink() > 0)
        {
            return Some(f.clone());
        }
        let mut path = self.inner.db_path.clone().into_os_string();
        path.push("-shm");
        let f = Arc::new(File::open(path).ok()?);
        *slot = Some(f.clone());
        Some(f)
    }

    /// Looks a path up by its hash part (what a `<hash>.narinfo` request carries).
    pub fn query_path_info(&self, hash: &StorePathHash) -> Result<Option<PathInfo>> {
        let dir = &self.inner.layout.store_dir;
        let low = format!("{dir}/{hash}-");
        let high = format!("{dir}/{hash}.");
        self.with_conn(|conn| {
            let tx = conn.unchecked_transaction()?;
            let row = tx
                .prepare_cached(BY_HASH_PART)?
                .query_row([&low, &high], |row| self.decode_row(row))
                .optional()?;
            let info = match row {
                Some(row) if row.path.hash() == *hash => Some(self.complete(&tx, row)?),
                _ => None,
            };
            tx.finish()?;
            Ok(info)
        })
    }

    /// Looks a path up by its NAR hash (harmonia's `nar/<narhash>.nar` URL without ?hash=).
    ///
    /// `ValidPaths.hash` has no index, so this scans the table; if several paths have the same
    /// NAR (same contents), the oldest registration wins.
    pub fn query_by_nar_hash(&self, nar_hash: &Sha256Hash) -> Result<Option<PathInfo>> {
        let key = format!("sha256:{}", nar_hash.to_base16());
        self.with_conn(|conn| {
            let tx = conn.unchecked_transaction()?;
            let row = tx
                .prepare_cached(BY_NAR_HASH)?
                .query_row([&key], |row| self.decode_row(row))
                .optional()?;
            let info = row.map(|row| self.complete(&tx, row)).transpose()?;
            tx.finish()?;
            Ok(info)
        })
    }

    /// Outputs recorded for a derivation: (output name, path), sorted by output name.
    /// Empty if the derivation is not valid in this store.
    pub fn query_derivation_outputs(&self, drv: &StorePath) -> Result<Vec<(String, StorePath)>> {
        let drv_path = drv.to_absolute(&self.inner.layout.store_dir);
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(DRV_OUTPUTS)?;
            let rows = stmt.query_map([&drv_path], |row| {
                Ok((row.get::<_, String>(0)?, self.store_path_col(row, 1)?))
            })?;
            rows.collect()
        })
    }

    /// Every valid path, sorted by path string (as Nix lists them). Reads the whole table in one statement (one read
    /// transaction for its duration): meant for benchmarks and tests, not for requests.
    pub fn all_paths(&self) -> Result<Vec<StorePath>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(ALL_PATHS)?;
            let rows = stmt.query_map([], |row| self.store_path_col(row, 0))?;
            rows.collect()
        })
    }

    /// Runs `f` on a pooled connection. A connection that hit an SQLite error is closed
    /// instead of returned, so a broken handle cannot poison later requests.
    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.take_conn()?;
        let result = f(&conn);
        let keep = !matches!(result, Err(rusqlite::Error::SqliteFailure(..)));
        if keep {
            self.give_back(conn);
        }
        result.map_err(|source| self.db_error(source))
    }

    fn take_conn(&self) -> Result<Connection> {
        if let Some(conn) = self.inner.lock_idle().pop() {
            return Ok(conn);
        }
        self.connect().map_err(|source| self.db_error(source))
    }

    fn give_back(&self, conn: Connection) {
        // A transaction left open (a rollback that failed) would pin a WAL snapshot for as long
        // as the connection sits in the pool and stall Nix's checkpoints: close it instead.
        if !conn.is_autocommit() {
            return;
        }
        let mut idle = self.inner.lock_idle();
        if idle.len() < self.inner.max_idle {
            idle.push(conn);
        }
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let query = match self.inner.mode {
            Mode::Shared => "mode=ro",
            Mode::Immutable => "mode=ro&immutable=1",
        };
        let uri = format!("file:{}?{query}", uri_escape(&self.inner.db_path));
        let conn = Connection::open_with_flags(uri, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    }

    fn db_error(&self, source: rusqlite::Error) -> Error {
        Error::Db {
            path: self.inner.db_path.clone(),
            source,
        }
    }

    /// SQLite reports a `-shm` it cannot create as "attempt to write a readonly database",
    /// which reads as if we had tried to write. Say what is actually wrong.
    fn explain_open_error(&self, e: Error) -> Error {
        let Error::Db {
            path,
            source: rusqlite::Error::SqliteFailure(ffi_err, msg),
        } = e
        else {
            return e;
        };
        if self.inner.mode != Mode::Shared || ffi_err.code != rusqlite::ErrorCode::ReadOnly {
            return Error::Db {
                path,
                source: rusqlite::Error::SqliteFailure(ffi_err, msg),
            };
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        let msg = format!(
            "cannot read the WAL database: SQLite needs {}-shm, which does not exist (no Nix \
             process has the database open) and cannot be created because {} is not writable \
             by this user; run as a user who may write there, or open a store that nothing \
             modifies with StoreDb::open_immutable",
            path.display(),
            dir.display()
        );
        Error::Db {
            path,
            source: rusqlite::Error::SqliteFailure(ffi_err, Some(msg)),
        }
    }

    fn store_path_col(&self, row: &Row<'_>, idx: usize) -> rusqlite::Result<StorePath> {
        let s = text_col(row, idx)?;
        StorePath::from_absolute(&self.inner.layout.store_dir, s)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
    }

    fn decode_row(&self, row: &Row<'_>) -> rusqlite::Result<RawRow> {
        let path = self.store_path_col(row, 1)?;
        let hash = text_col(row, 2)?;
        let nar_hash = Sha256Hash::parse(hash)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(2, Type::Text, Box::new(e)))?;
        // Nix reads a NULL time or size as 0; so do we.
        let registration_time = row.get::<_, Option<i64>>(3)?.unwrap_or(0);
        let deriver = match row.get_ref(4)? {
            ValueRef::Null => None,
            _ if text_col(row, 4)?.is_empty() => None,
            _ => Some(self.store_path_col(row, 4)?),
        };
        let nar_size = row.get::<_, Option<u64>>(5)?.unwrap_or(0);
        let sigs = row
            .get::<_, Option<String>>(6)?
            .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let ca = row.get::<_, Option<String>>(7)?.filter(|s| !s.is_empty());
        Ok(RawRow {
            id: row.get(0)?,
            path,
            nar_hash,
            nar_size,
            deriver,
            sigs,
            ca,
            registration_time,
        })
    }

    /// Adds the references of a row, inside the caller's read transaction so the row and its
    /// references come from the same snapshot.
    fn complete(&self, conn: &Connection, row: RawRow) -> rusqlite::Result<PathInfo> {
        let mut stmt = conn.prepare_cached(REFERENCES)?;
        let mut references = stmt
            .query_map([row.id], |r| self.store_path_col(r, 0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // Nix orders references by their printed path (a std::set of strings), and the
        // signature fingerprint lists them in that order; `StorePath`'s own `Ord` compares the
        // decoded hash bytes, which is a different order.
        references.sort();
        Ok(PathInfo {
            path: row.path,
            nar_hash: row.nar_hash,
            nar_size: row.nar_size,
            references,
            deriver: row.deriver,
            sigs: row.sigs,
            ca: row.ca,
            registration_time: row.registration_time,
        })
    }
}

impl Inner {
    /// Poisoning only means another thread panicked between a push and a pop; the Vec of
    /// connections is still consistent, so keep using it.
    fn lock_idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct RawRow {
    id: i64,
    path: StorePath,
    nar_hash: Sha256Hash,
    nar_size: u64,
    deriver: Option<StorePath>,
    sigs: Vec<String>,
    ca: Option<String>,
    registration_time: i64,
}

fn text_col<'r>(row: &'r Row<'_>, idx: usize) -> rusqlite::Result<&'r str> {
    let value = row.get_ref(idx)?;
    value
        .as_str()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, value.data_type(), Box::new(e)))
}

/// Escapes a file name for an SQLite `file:` URI: `?`, `#` and `%` would otherwise be read as
/// URI syntax, so everything outside a conservative set is percent-encoded.
fn uri_escape(path: &Path) -> String {
    let mut out = String::new();
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~+,=@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push_str(&hex::encode_upper([b]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with Nix's schema, written by the test (pool mechanics need no Nix).
    fn schema_only_store() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::under_root(dir.path());
        std::fs::create_dir_all(layout.db_path().parent().unwrap()).unwrap();
        let conn = Connection::open(layout.db_path()).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE ValidPaths (id integer primary key autoincrement not null,
               path text unique not null, hash text not null, registrationTime integer not null,
               deriver text, narSize integer, ultimate integer, sigs text, ca text);
             CREATE TABLE Refs (referrer integer not null, reference integer not null,
               primary key (referrer, reference));
             CREATE TABLE DerivationOutputs (drv integer not null, id text not null,
               path text not null, primary key (drv, id));",
        )
        .unwrap();
        dir
    }

    #[test]
    fn layout_paths() {
        let sys = StoreLayout::system();
        assert_eq!(sys.physical_store_dir(), Path::new("/nix/store"));
        assert_eq!(sys.db_path(), Path::new("/nix/var/nix/db/db.sqlite"));
        assert_eq!(sys.log_dir(), Path::new("/nix/var/log/nix/drvs"));
        let p = StorePath::from_base_name("7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12.1").unwrap();
        let other = StoreLayout::under_root("/srv/s");
        assert_eq!(
            other.physical_path(&p),
            Path::new("/srv/s/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12.1")
        );
        assert_eq!(
            other.db_path(),
            Path::new("/srv/s/nix/var/nix/db/db.sqlite")
        );
    }

    #[test]
    fn uri_escape_keeps_uri_syntax_out() {
        assert_eq!(
            uri_escape(Path::new("/a b/c?d#e%f/db.sqlite")),
            "/a%20b/c%3Fd%23e%25f/db.sqlite"
        );
    }

    #[test]
    fn pool_is_bounded_and_lazy() {
        let dir = schema_only_store();
        let db = StoreDb::open_with_max_idle(&StoreLayout::under_root(dir.path()), 3).unwrap();
        // open() validated with one connection and kept it.
        assert_eq!(db.idle_connections(), 1);
        let held: Vec<Connection> = (0..10).map(|_| db.take_conn().unwrap()).collect();
        assert_eq!(db.idle_connections(), 0);
        for conn in held {
            db.give_back(conn);
        }
        assert_eq!(db.idle_connections(), 3);
    }

    #[test]
    fn pool_is_shared_across_threads() {
        let dir = schema_only_store();
        let db = StoreDb::open(&StoreLayout::under_root(dir.path())).unwrap();
        let barrier = std::sync::Barrier::new(16);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..50 {
                        assert!(db.all_paths().unwrap().is_empty());
                    }
                });
            }
        });
        assert!(db.idle_connections() <= DEFAULT_MAX_IDLE);
        assert!(db.idle_connections() >= 1);
    }

    #[test]
    fn data_version_changes_with_every_commit_and_only_then() {
        let dir = schema_only_store();
        let layout = StoreLayout::under_root(dir.path());
        // A writer keeps the database open, as the Nix daemon does.
        let w = Connection::open(layout.db_path()).unwrap();
        let db = StoreDb::open(&layout).unwrap();
        let insert = |n: i64| {
            w.execute(
                "INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?1, 'h', 1, 1)",
                [format!("/nix/store/{n:0>32}-p")],
            )
            .unwrap();
        };
        insert(0);
        let mut seen = vec![db.data_version().expect("a WAL database has a version")];
        for n in 1..20 {
            // Reads change nothing.
            assert_eq!(db.all_paths().unwrap().len(), n as usize);
            assert_eq!(db.data_version(), seen.last().copied());
            insert(n);
            let v = db.data_version().unwrap();
            assert!(!seen.contains(&v), "commit {n} left the version as it was");
            seen.push(v);
        }
        // A checkpoint that restarts the WAL is a change too.
        w.execute_batch("PRAGMA wal_checkpoint(RESTART);").unwrap();
        insert(99);
        assert!(!seen.contains(&db.data_version().unwrap()));
    }

    #[test]
    fn data_version_is_unknown_without_wal() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::under_root(dir.path());
        std::fs::create_dir_all(layout.db_path().parent().unwrap()).unwrap();
        Connection::open(layout.db_path())
            .unwrap()
            .execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE ValidPaths (id integer primary key, path text, hash text, registrationTime integer, deriver text, narSize integer, sigs text, ca text); CREATE TABLE Refs (referrer integer, reference integer); CREATE TABLE DerivationOutputs (drv integer, id text, path text);")
            .unwrap();
        let db = StoreDb::open(&layout).unwrap();
        assert_eq!(db.data_version(), None);
    }

    #[test]
    fn references_are_in_nix_order() {
        let dir = schema_only_store();
        let layout = StoreLayout::under_root(dir.path());
        // nix32 puts the last byte first, so these two sort differently as strings and bytes.
        let a = format!("1{}-a", "0".repeat(31));
        let b = format!("{}1-b", "0".repeat(31));
        let top = format!("{}-top", "2".repeat(32));
        {
            let w = Connection::open(layout.db_path()).unwrap();
            for (id, base) in [(1, &top), (2, &a), (3, &b)] {
                w.execute(
                    "INSERT INTO ValidPaths (id, path, hash, registrationTime, narSize) \
                     VALUES (?1, ?2, ?3, 7, 9)",
                    rusqlite::params![
                        id,
                        format!("/nix/store/{base}"),
                        format!("sha256:{}", "ab".repeat(32))
                    ],
                )
                .unwrap();
            }
            w.execute_batch("INSERT INTO Refs VALUES (1, 2), (1, 3), (1, 1)")
                .unwrap();
        }
        let db = StoreDb::open(&layout).unwrap();
        let top = StorePath::from_base_name(&top).unwrap();
        let info = db.query_path_info(&top.hash()).unwrap().unwrap();
        let names: Vec<String> = info.references.iter().map(StorePath::base_name).collect();
        assert_eq!(names, [b.clone(), a.clone(), top.base_name()]);
        let mut by_ord = info.references.clone();
        by_ord.sort();
        assert_eq!(
            by_ord, info.references,
            "StorePath's Ord is Nix's string order"
        );
        assert_eq!(info.nar_size, 9);
        assert_eq!(info.registration_time, 7);
        assert_eq!(info.nar_hash, Sha256Hash([0xab; 32]));
        assert_eq!((info.deriver, info.sigs, info.ca), (None, vec![], None));
    }

    #[test]
    fn handle_is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<StoreDb>();
    }

    #[test]
    fn open_transactions_are_not_pooled() {
        let dir = schema_only_store();
        let db = StoreDb::open(&StoreLayout::under_root(dir.path())).unwrap();
        let conn = db.take_conn().unwrap();
        conn.execute_batch("BEGIN; SELECT count(*) FROM ValidPaths;")
            .unwrap();
        db.give_back(conn);
        assert_eq!(db.idle_connections(), 0);
        let conn = db.take_conn().unwrap();
        db.give_back(conn);
        assert_eq!(db.idle_connections(), 1);
    }

    #[test]
    fn sqlite_errors_drop_the_connection() {
        let dir = schema_only_store();
        let db = StoreDb::open(&StoreLayout::under_root(dir.path())).unwrap();
        assert_eq!(db.idle_connections(), 1);
        let err = db.with_conn(|c| c.execute_batch("SELECT * FROM NoSuchTable"));
        assert!(matches!(err, Err(Error::Db { .. })));
        assert_eq!(db.idle_connections(), 0);
    }
}
