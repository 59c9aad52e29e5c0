//! Bearer-token auth for the lstmd services (health and reflection stay
//! open: they are not wrapped).
//!
//! Tokens come from a file, one a line; blank lines and lines starting with
//! `#` are ignored. The file is checked for changes (modification time,
//! length, inode) at most once a second, on a request, and re-read when it
//! changed, so tokens can be rotated without a restart (a Kubernetes Secret
//! volume swaps its files by a symlink: the new inode is seen). Only SHA-256
//! digests of the tokens are kept, and a presented token is compared with
//! every one of them in constant time, so neither the position of the first
//! differing byte nor a token's length leaks through timing. Tokens are
//! never logged.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

const RECHECK_EVERY: Duration = Duration::from_secs(1);

type TokenDigest = [u8; 32];

fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

/// What identifies a version of the token file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: (u64, u64),
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    // Follows symlinks, so a swapped `..data` link of a Secret volume shows.
    let meta = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        #[cfg(unix)]
        inode: {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        },
    })
}

fn read_tokens(path: &Path) -> std::io::Result<Vec<TokenDigest>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| digest(l.as_bytes()))
        .collect())
}

struct State {
    digests: Vec<TokenDigest>,
    stamp: Option<Stamp>,
    checked: Instant,
}

/// The tokens of a token file, reloaded when the file changes.
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenFile {
    /// Reads the file; a file that cannot be read or holds no token is an
    /// error (auth on with no token would refuse every call).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let stamp = stamp(path)
            .map_err(|e| anyhow::anyhow!("--auth-token-file {}: {e}", path.display()))?;
        let digests = read_tokens(path)
            .map_err(|e| anyhow::anyhow!("--auth-token-file {}: {e}", path.display()))?;
        if digests.is_empty() {
            anyhow::bail!(
                "--auth-token-file {} holds no token (one a line; blank lines and # comments are ignored)",
                path.display()
            );
        }
        tracing::info!(path = %path.display(), tokens = digests.len(), "bearer-token auth is on");
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                digests,
                stamp: Some(stamp),
                checked: Instant::now(),
            }),
        })
    }

    /// True when `token` is one of the file's tokens. Re-reads the file
    /// first when it is due for a check and has changed.
    pub fn accepts(&self, token: &[u8]) -> bool {
        let presented = digest(token);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RECHECK_EVERY {
            state.checked = Instant::now();
            self.reload_if_changed(&mut state);
        }
        // Every digest is compared, whatever matched before.
        let mut found = subtle::Choice::from(0);
        for d in &state.digests {
            found |= d.ct_eq(&presented);
        }
        found.into()
    }

    fn reload_if_changed(&self, state: &mut State) {
        let now = match stamp(&self.path) {
            Ok(s) => s,
            Err(e) => {
                // Keep the last good tokens; say so once per change.
                if state.stamp.take().is_some() {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot read the auth token file; keeping the tokens read before");
                }
                return;
            }
        };
        if state.stamp.as_ref() == Some(&now) {
            return;
        }
        match read_tokens(&self.path) {
            Ok(digests) => {
                if digests.is_empty() {
                    tracing::warn!(path = %self.path.display(), "the auth token file holds no token now: every call is refused");
                } else {
                    tracing::info!(path = %self.path.display(), tokens = digests.len(), "auth tokens reloaded");
                }
                state.digests = digests;
                state.stamp = Some(now);
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the auth token file; keeping the tokens read before");
            }
        }
    }
}

/// The interceptor in front of the lstmd services: with no token file it
/// lets everything through.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: Option<Arc<TokenFile>>,
}

impl Auth {
    pub fn new(tokens: Option<Arc<TokenFile>>) -> Self {
        Self { tokens }
    }

    pub fn is_on(&self) -> bool {
        self.tokens.is_some()
    }
}

/// The token of an `authorization: Bearer <token>` header (the scheme is
/// case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(request);
        };
        let Some(header) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing credentials: send the header `authorization: Bearer <token>`",
            ));
        };
        let Some(token) = bearer(header.as_bytes()) else {
            return Err(Status::unauthenticated(
                "the authorization header must be `Bearer <token>`",
            ));
        };
        if tokens.accepts(token) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer  "), None);
        assert_eq!(bearer(b"abc"), None);
    }

    #[test]
    fn token_file_skips_comments_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# ops\n\n  first  \nsecond\n#third\n").unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert!(file.accepts(b"first"));
        assert!(file.accepts(b"second"));
        assert!(!file.accepts(b"#third"));
        assert!(!file.accepts(b"third"));
        assert!(!file.accepts(b""));
        assert!(!file.accepts(b"firs"));
    }

    #[test]
    fn token_file_without_tokens_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# nothing\n\n").unwrap();
        let e = TokenFile::open(&path).unwrap_err().to_string();
        assert!(e.contains("holds no token"), "{e}");
        assert!(TokenFile::open(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn token_file_reloads_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "old\n").unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert!(file.accepts(b"old"));
        std::fs::write(&path, "new-token\n").unwrap();
        // Force the next request to look at the file.
        file.state.lock().unwrap().checked = Instant::now() - RECHECK_EVERY;
        assert!(file.accepts(b"new-token"));
        assert!(!file.accepts(b"old"));
        // A file that disappears keeps the last tokens.
        std::fs::remove_file(&path).unwrap();
        file.state.lock().unwrap().checked = Instant::now() - RECHECK_EVERY;
        assert!(file.accepts(b"new-token"));
    }
}
