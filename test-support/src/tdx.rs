//! Real TDX evidence and local stand-ins of the three quote providers' protocols.
//!
//! The sample quote and its collateral are the ones the `dcap-qvl` 0.7.1 crate ships under
//! `sample/` (`tdx_quote`, `tdx_quote_collateral.json`; MIT, Phala Network): a real quote
//! from a TDX platform, verifiable offline at [`SAMPLE_AT`], which lies inside the
//! collateral's validity (2025-06-19T10:32:27Z to 2025-07-19T10:00:35Z). Its report data was
//! not made over any oauth3 statement, so a binding check against it always fails; that is
//! what the tests use it for too. See `fixtures/tdx/SOURCE.md`.
//!
//! The stand-ins hand back that quote and record what the runner asked for:
//! [`DstackAgent`] (`POST /GetQuote` over a unix socket), [`CocoAgent`] (`GET /aa/evidence`
//! over loopback HTTP) and [`TsmDir`] (a configfs-tsm report entry whose `outblob` is a FIFO
//! served by a thread, so the quote is produced after `inblob` is written, as the kernel
//! does).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// A real TDX quote (v4) from `dcap-qvl`'s samples.
pub const SAMPLE_QUOTE: &[u8] = include_bytes!("../fixtures/tdx/tdx_quote");
/// Its collateral (JSON as `dcap-qvl` reads it).
pub const SAMPLE_COLLATERAL: &str = include_str!("../fixtures/tdx/tdx_quote_collateral.json");
/// The sample quote's platform as its PCK certificate says: FMSPC (upper-case hex) and the
/// PCK CA that issued it, what a PCCS is asked for.
pub const SAMPLE_FMSPC: &str = "B0C06F000000";
/// See [`SAMPLE_FMSPC`].
pub const SAMPLE_PCK_CA: &str = "platform";
/// A time inside the collateral's validity: 2025-07-01T00:00:00Z.
pub const SAMPLE_AT: u64 = 1_751_328_000;
/// A time after the collateral expired: 2025-08-01T00:00:00Z.
pub const SAMPLE_EXPIRED_AT: u64 = 1_754_006_400;

/// The sample quote's MRTD, hex (for policies).
pub fn sample_mrtd() -> String {
    // TD report v4: header 48 bytes, then TEE_TCB_SVN 16, MRSEAM 48, MRSIGNERSEAM 48,
    // SEAMATTRIBUTES 8, TDATTRIBUTES 8, XFAM 8, MRTD 48.
    hex::encode(&SAMPLE_QUOTE[48 + 16 + 48 + 48 + 8 + 8 + 8..][..48])
}

/// Offset of the TD report's REPORTDATA in a v4 quote.
pub const REPORT_DATA_OFFSET: usize = 48 + 584 - 64;

type Log = Arc<Mutex<Vec<String>>>;

/// Answers one HTTP request with `reply`, or with `other.1` when the request line holds
/// `other.0` (a path), and records it.
async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    log: Log,
    reply: String,
    other: Option<(&'static str, String)>,
) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while raw.len() < head_end + 4 + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let body = String::from_utf8_lossy(&raw[head_end + 4..]).into_owned();
    let line = head.lines().next().unwrap_or_default().to_owned();
    log.lock().unwrap().push(format!("{line}\n{body}"));
    let reply = match other {
        Some((path, answer)) if line.contains(path) => answer,
        _ => reply,
    };
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A dstack guest agent stand-in on a unix socket: answers `GetQuote` with the sample quote
/// and `event_log` (and, when started [`DstackAgent::with_key`], `GetKey` with that key), and
/// records each request (request line, newline, body). The socket is open to every local user,
/// as dstack's is, so a non-root runner in a Pod can use it.
pub struct DstackAgent {
    /// The socket path.
    pub socket: PathBuf,
    log: Log,
    task: tokio::task::JoinHandle<()>,
}

impl DstackAgent {
    /// Listens on `socket`, answering with `event_log`.
    pub fn start(socket: &Path, event_log: &str) -> Self {
        Self::serve(socket, event_log, None)
    }

    /// [`DstackAgent::start`], also answering `GetKey` with `key` (what the runner's dstack key
    /// provider opens sealed secrets with).
    pub fn with_key(socket: &Path, event_log: &str, key: [u8; 32]) -> Self {
        let answer = serde_json::json!({"key": hex::encode(key), "signature_chain": []});
        Self::serve(socket, event_log, Some(("/GetKey", answer.to_string())))
    }

    fn serve(socket: &Path, event_log: &str, key: Option<(&'static str, String)>) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket).expect("bind the dstack socket");
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
            .expect("open the dstack socket to every user");
        let log = Log::default();
        let reply = serde_json::json!({
            "quote": hex::encode(SAMPLE_QUOTE),
            "event_log": event_log,
            "report_data": "",
            "vm_config": "{}",
        })
        .to_string();
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve_http(stream, log.clone(), reply.clone(), key.clone()));
                }
            })
        };
        Self {
            socket: socket.to_owned(),
            log,
            task,
        }
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for DstackAgent {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A Confidential Containers attestation-agent stand-in (the in-guest API server's
/// `/aa/evidence`) on loopback TCP, answering with TDX evidence of the sample quote.
pub struct CocoAgent {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    log: Log,
    task: tokio::task::JoinHandle<()>,
}

impl CocoAgent {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        use base64::Engine as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let log = Log::default();
        let reply = serde_json::json!({
            "quote": base64::engine::general_purpose::STANDARD.encode(SAMPLE_QUOTE),
            "cc_eventlog": base64::engine::general_purpose::STANDARD.encode(b"ccel"),
        })
        .to_string();
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve_http(stream, log.clone(), reply.clone(), None));
                }
            })
        };
        Self { url, log, task }
    }

    /// The requests received so far (request line, newline, body).
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for CocoAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A configfs-tsm report entry: `provider` (`tdx_guest`), `generation`, and `inblob` and
/// `outblob` as FIFOs served by a thread: for each report it reads the 64 bytes the runner
/// writes to `inblob`, records them, bumps `generation`, and hands the sample quote to the next
/// read of `outblob`.
pub struct TsmDir {
    /// The entry directory (pass it as `--tsm-report-dir`).
    pub dir: PathBuf,
    inblobs: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
}

impl TsmDir {
    /// Creates the entry in `dir` (which must not exist yet).
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("tsm dir");
        std::fs::write(dir.join("provider"), "tdx_guest\n").expect("provider");
        std::fs::write(dir.join("generation"), "0\n").expect("generation");
        mkfifo(&dir.join("inblob"));
        mkfifo(&dir.join("outblob"));
        let inblobs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (dir, inblobs, stop) = (dir.to_owned(), inblobs.clone(), stop.clone());
            std::thread::spawn(move || {
                // Held open for reading and writing for the stand-in's whole life: every
                // report's 64 bytes stay in this one pipe until read, whatever other
                // processes come and go.
                let Ok(mut input) = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(dir.join("inblob"))
                else {
                    return;
                };
                let mut generation = 0u64;
                loop {
                    let mut inblob = vec![0u8; 64];
                    if input.read_exact(&mut inblob).is_err() || stop.load(Ordering::SeqCst) {
                        return;
                    }
                    inblobs.lock().unwrap().push(inblob);
                    generation += 1;
                    let _ = std::fs::write(dir.join("generation"), format!("{generation}\n"));
                    // Blocks until the runner reads outblob.
                    let Ok(mut out) = std::fs::OpenOptions::new()
                        .write(true)
                        .open(dir.join("outblob"))
                    else {
                        return;
                    };
                    let _ = out.write_all(SAMPLE_QUOTE);
                    drop(out);
                }
            })
        };
        Self {
            dir: dir.to_owned(),
            inblobs,
            stop,
            thread: Some(thread),
        }
    }

    /// What was written to `inblob` for each report, in order.
    pub fn inblobs(&self) -> Vec<Vec<u8>> {
        self.inblobs.lock().unwrap().clone()
    }
}

impl Drop for TsmDir {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the thread waiting for the next report (it holds inblob open, so this never
        // blocks); a thread still waiting for a reader of outblob is left behind.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("inblob"))
        {
            let _ = f.write_all(&[0; 64]);
        }
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
