//! Throwaway cluster stores for the tests of `--records` and `--blobs`: a
//! real PostgreSQL (Debian's, initdb'd into a temp dir) and a real
//! S3-compatible server (npm's s3rver, installed on first use under
//! target/), each its own process. They start once per test binary and stop
//! when it exits: each runs under a shell that kills it once the test
//! process's end of its stdin closes. Every test takes its own database and
//! its own prefix of the one bucket.
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BUCKET: &str = "lstmd";
/// s3rver's fixed credentials.
const S3_KEY: &str = "S3RVER";

pub struct Cluster {
    pub pg_port: u16,
    pub s3_endpoint: String,
    // Never dropped: the servers stop when the test process ends.
    _servers: Vec<StoreServer>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NAMES: AtomicUsize = AtomicUsize::new(0);

pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `program args` as the postgres user when the tests run as root
/// (PostgreSQL refuses to run as root).
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A store server (PostgreSQL or s3rver) on a port of its own; it stops
/// when `stop` is called or the test process ends.
pub struct StoreServer {
    pub port: u16,
    child: Child,
    stop: Option<ChildStdin>,
}

impl StoreServer {
    /// Stops the server and waits until it has.
    pub fn stop(mut self) {
        drop(self.stop.take());
        let _ = self.child.wait();
    }
}

/// Runs `command` under a shell that kills it when our stdin pipe closes.
fn start_guarded(mut command: Command, log: &Path, port: u16) -> StoreServer {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    command
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut child = command.spawn().expect("a cluster store server starts");
    let stop = child.stdin.take();
    StoreServer { port, child, stop }
}

/// A shell running `script` until its stdin closes (as the postgres user
/// when `as_postgres` and the tests run as root).
fn guarded_shell(script: &str, as_postgres: bool) -> Command {
    let mut c = if as_postgres {
        as_pg_user(Path::new("sh"))
    } else {
        Command::new("sh")
    };
    // `script` may end with a clean-up after `;`: the server is its first
    // command.
    let (server, after) = script.split_once("; ").unwrap_or((script, "true"));
    c.args([
        "-c",
        &format!("{server} & pid=$!; read _; kill -INT $pid; wait $pid; {after}"),
    ]);
    c
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not start in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pg_bindir() -> PathBuf {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config (PostgreSQL) is installed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// PostgreSQL on `port` with its files under `dir/pg`, initdb'd on first
/// start (a later start on the same `dir` finds its databases again).
/// `clean_up` removes the files once it stops.
pub fn postgres(dir: &Path, port: u16, clean_up: bool) -> StoreServer {
    postgres_with(dir, port, clean_up, "")
}

/// PostgreSQL that takes TLS connections only, with this certificate and
/// key (PEM).
pub fn postgres_tls_only(dir: &Path, port: u16, cert: &str, key: &str) -> StoreServer {
    let pg = dir.join("pg");
    if !pg.join("db").exists() {
        init_postgres(&pg_bindir(), dir, &pg);
    }
    let db = pg.join("db");
    std::fs::write(db.join("server.crt"), cert).unwrap();
    std::fs::write(db.join("server.key"), key).unwrap();
    std::fs::write(
        db.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        db.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    if is_root() {
        assert!(Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&db)
            .status()
            .unwrap()
            .success());
    }
    postgres_with(dir, port, false, " -c ssl=on")
}

fn postgres_with(dir: &Path, port: u16, clean_up: bool, options: &str) -> StoreServer {
    let bin = pg_bindir();
    let pg = dir.join("pg");
    if !pg.join("db").exists() {
        init_postgres(&bin, dir, &pg);
    }
    let mut script = format!(
        "{} -D {} -p {port} -k {} -c listen_addresses=127.0.0.1 -F{options}",
        bin.join("postgres").display(),
        pg.join("db").display(),
        pg.display()
    );
    if clean_up {
        script += &format!("; rm -rf {}", pg.display());
    }
    let server = start_guarded(
        guarded_shell(&script, true),
        &dir.join("postgres.log"),
        port,
    );
    // (psql prefers TLS without verifying it, so this works on a TLS-only
    // server too.)
    wait_until("PostgreSQL", || psql(port, "postgres", "SELECT 1").is_ok());
    server
}

fn init_postgres(bin: &Path, dir: &Path, pg: &Path) {
    std::fs::create_dir_all(pg).unwrap();
    // The postgres user must reach its folder inside our temp dir.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        assert!(Command::new("chown")
            .args(["-R", "postgres"])
            .arg(pg)
            .status()
            .unwrap()
            .success());
    }
    let status = as_pg_user(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(pg.join("db"))
        .stdout(Stdio::null())
        .status()
        .expect("initdb runs");
    assert!(status.success(), "initdb failed");
}

/// Runs one statement with psql; Err(stderr) if it fails.
pub fn psql(port: u16, database: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-p", &port.to_string(), "-d", database, "-c", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// s3rver, installed with npm under target/ the first time.
fn s3rver_bin() -> PathBuf {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools");
    let bin = tools.join("node_modules/.bin/s3rver");
    if !bin.exists() {
        std::fs::create_dir_all(&tools).unwrap();
        let status = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&tools)
            .arg("s3rver@3.7.1")
            .status()
            .expect("npm (Node.js) is installed");
        assert!(status.success(), "npm install s3rver failed");
    }
    bin
}

/// s3rver on `port` with its objects under `dir/s3` (kept across a
/// restart on the same `dir`); `clean_up` removes them once it stops.
pub fn s3rver(dir: &Path, port: u16, clean_up: bool) -> StoreServer {
    let data = dir.join("s3");
    std::fs::create_dir_all(&data).unwrap();
    let mut script = format!(
        "{} -d {} -a 127.0.0.1 -p {port} --no-vhost-buckets --silent --configure-bucket {BUCKET}",
        s3rver_bin().display(),
        data.display(),
    );
    if clean_up {
        script += &format!("; rm -rf {}", data.display());
    }
    let server = start_guarded(guarded_shell(&script, false), &dir.join("s3rver.log"), port);
    wait_until("s3rver", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    server
}

impl Cluster {
    fn start() -> Cluster {
        // Outlives the test process: each server removes its data once it
        // stops (the logs stay, for a failed run).
        let dir = tempfile::tempdir().unwrap().keep();
        let pg = postgres(&dir, free_port(), true);
        let s3 = s3rver(&dir, free_port(), true);
        Cluster {
            pg_port: pg.port,
            s3_endpoint: format!("http://127.0.0.1:{}", s3.port),
            _servers: vec![pg, s3],
        }
    }

    /// A fresh, empty database: its URL.
    pub fn database(&self) -> String {
        let name = format!(
            "test{}_{}",
            std::process::id(),
            NAMES.fetch_add(1, Ordering::SeqCst)
        );
        psql(self.pg_port, "postgres", &format!("CREATE DATABASE {name}")).unwrap();
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.pg_port)
    }

    /// A fresh prefix of the bucket: its URL.
    pub fn blobs(&self) -> String {
        let name = format!(
            "t{}-{}",
            std::process::id(),
            NAMES.fetch_add(1, Ordering::SeqCst)
        );
        format!("s3://{BUCKET}/{name}")
    }

    /// The S3 client's settings for s3rver.
    pub fn blob_options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.s3_endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", S3_KEY),
            ("aws_secret_access_key", S3_KEY),
            ("aws_region", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The environment a `lstmd serve` child needs for s3rver.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", S3_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_KEY.into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }

    /// `serve` flags for the database `records` and the bucket prefix
    /// `blobs`.
    pub fn serve_flags(&self, records: &str, blobs: &str) -> Vec<String> {
        serve_flags_at(records, blobs, &self.s3_endpoint)
    }
}

/// `serve` flags for `records` and `blobs` on the S3 server at `endpoint`.
pub fn serve_flags_at(records: &str, blobs: &str, endpoint: &str) -> Vec<String> {
    [
        "--records",
        records,
        "--blobs",
        blobs,
        "--s3-endpoint",
        endpoint,
        "--s3-allow-http",
    ]
    .map(String::from)
    .to_vec()
}
