//! Portable sessions: the whole session (model, position, and its
//! recurrent state or last window of tokens) in a token the client holds
//! and sends back with its next FeedSession, to any replica. Nothing of it
//! stays in a server's memory, so a session survives a pod restart, a
//! rolling update and round-robin balancing. Tokens are versioned and
//! signed (HMAC-SHA256) with the session key the replicas share: a replica
//! accepts only tokens one of them made, and a client cannot alter a state.
//!
//! Layout: `lss1` | header length (u32 LE) | header (JSON) | the state's
//! numbers (f64 LE, layer by layer, h then c) | HMAC of all before it.
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::context::Reading;
use crate::backend::{Backend, StateValues};
use crate::error::InvalidField;
use crate::nn::{Cell, ModelSpec};

const MAGIC: &[u8; 4] = b"lss1";
const TAG: usize = 32;
/// The field a token arrives in, for error messages.
const FIELD: &str = "state";

/// The key that signs tokens; replicas that share it accept each other's.
#[derive(Clone)]
pub struct SessionKey(Vec<u8>);

impl SessionKey {
    /// Keys shorter than this are refused (HMAC-SHA256's block is 64).
    pub const MIN_BYTES: usize = 32;

    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < Self::MIN_BYTES {
            return Err(format!(
                "a session key needs at least {} bytes, this one has {}",
                Self::MIN_BYTES,
                bytes.len()
            ));
        }
        Ok(Self(bytes))
    }

    /// A key of this process alone: its tokens are good only here.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().as_bytes().repeat(2))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

/// What a token says, apart from the state's numbers.
#[derive(Serialize, Deserialize)]
struct Header {
    session: String,
    model: String,
    version: u32,
    tokens_seen: u64,
    /// When the token was made: tokens expire like idle sessions.
    issued_ms: u64,
    /// A window reading's size and tokens; None for a carried state.
    window: Option<(usize, Vec<u32>)>,
    /// Per layer, h's length and whether c follows.
    layers: Vec<(usize, bool)>,
}

/// A session as a token holds it.
pub struct PortableSession {
    pub session: String,
    pub model: String,
    pub version: u32,
    pub tokens_seen: u64,
    pub reading: Reading,
}

fn bad(rule: impl Into<String>) -> InvalidField {
    InvalidField::new(FIELD, rule)
}

/// Seals `session` into a token; `reading`'s carried state is read out
/// through its backend.
pub fn seal(
    key: &SessionKey,
    session: &PortableSession,
) -> Result<Vec<u8>, crate::backend::EngineError> {
    let (window, values) = match &session.reading {
        Reading::Window { window, recent } => (Some((*window, recent.clone())), Vec::new()),
        Reading::Carried(None) => (None, Vec::new()),
        Reading::Carried(Some(carried)) => (None, carried.values()?),
    };
    let header = Header {
        session: session.session.clone(),
        model: session.model.clone(),
        version: session.version,
        tokens_seen: session.tokens_seen,
        issued_ms: crate::store::now_millis(),
        window,
        layers: values.iter().map(|v| (v.h.len(), v.c.is_some())).collect(),
    };
    let json = serde_json::to_vec(&header).expect("headers serialize");
    let mut token = Vec::with_capacity(8 + json.len() + TAG);
    token.extend_from_slice(MAGIC);
    token.extend_from_slice(&(json.len() as u32).to_le_bytes());
    token.extend_from_slice(&json);
    for v in &values {
        for x in v.h.iter().chain(v.c.iter().flatten()) {
            token.extend_from_slice(&x.to_le_bytes());
        }
    }
    let mut mac = key.mac();
    mac.update(&token);
    token.extend_from_slice(&mac.finalize().into_bytes());
    Ok(token)
}

/// A token whose signature held, not yet tied to its model.
pub struct Unsealed {
    header: Header,
    numbers: Vec<u8>,
}

/// Why a token was not taken.
pub enum Refused {
    Invalid(InvalidField),
    /// Older than the idle timeout: the session ended, as an idle one does.
    Expired(String),
}

/// Checks a token's signature and age and reads its header.
pub fn unseal(key: &SessionKey, token: &[u8], max_age: Duration) -> Result<Unsealed, Refused> {
    let body = signed_body(key, token).map_err(Refused::Invalid)?;
    let header_len = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes")) as usize;
    let json = body
        .get(8..8usize.saturating_add(header_len))
        .ok_or_else(|| Refused::Invalid(bad("is cut short")))?;
    let header: Header = serde_json::from_slice(json)
        .map_err(|e| Refused::Invalid(bad(format!("has a bad header: {e}"))))?;
    let age = crate::store::now_millis().saturating_sub(header.issued_ms);
    if u128::from(age) > max_age.as_millis() {
        return Err(Refused::Expired(header.session));
    }
    Ok(Unsealed {
        numbers: body[8 + header_len..].to_vec(),
        header,
    })
}

impl Unsealed {
    pub fn session(&self) -> &str {
        &self.header.session
    }

    /// The model version the session runs on.
    pub fn model(&self) -> (&str, u32) {
        (&self.header.model, self.header.version)
    }

    /// The session, its state checked against `spec` (the model's) and
    /// handed to `backend`.
    pub fn restore(
        self,
        spec: &ModelSpec,
        backend: &dyn Backend,
    ) -> Result<PortableSession, InvalidField> {
        let h = self.header;
        let reading = match h.window {
            Some((window, recent)) => window_reading(spec, window, recent, &self.numbers)?,
            None => carried_reading(spec, &h.layers, &self.numbers, backend)?,
        };
        Ok(PortableSession {
            session: h.session,
            model: h.model,
            version: h.version,
            tokens_seen: h.tokens_seen,
            reading,
        })
    }
}

/// The token's body, once its signature holds.
fn signed_body<'a>(key: &SessionKey, token: &'a [u8]) -> Result<&'a [u8], InvalidField> {
    if token.len() < 8 + TAG || &token[..4] != MAGIC {
        return Err(bad(
            "is not a session token of this service (or of another version)",
        ));
    }
    let (body, tag) = token.split_at(token.len() - TAG);
    let mut mac = key.mac();
    mac.update(body);
    mac.verify_slice(tag)
        .map_err(|_| bad("has a bad signature: altered, or signed with another session key"))?;
    Ok(body)
}

fn window_reading(
    spec: &ModelSpec,
    window: usize,
    recent: Vec<u32>,
    numbers: &[u8],
) -> Result<Reading, InvalidField> {
    if !numbers.is_empty()
        || recent.len() > window
        || recent.iter().any(|&id| id as usize >= spec.vocab_size)
    {
        return Err(bad("holds a window that does not fit its model"));
    }
    Ok(Reading::Window { window, recent })
}

fn carried_reading(
    spec: &ModelSpec,
    layers: &[(usize, bool)],
    numbers: &[u8],
    backend: &dyn Backend,
) -> Result<Reading, InvalidField> {
    if layers.is_empty() && numbers.is_empty() {
        return Ok(Reading::Carried(None));
    }
    let fits = layers.len() == spec.layers.len()
        && layers
            .iter()
            .zip(&spec.layers)
            .all(|(&(h, c), l)| h == l.units && c == (l.cell == Cell::Lstm));
    let expected: usize = layers.iter().map(|&(h, c)| h * (1 + c as usize) * 8).sum();
    if !fits || numbers.len() != expected {
        return Err(bad("holds a state that does not fit its model"));
    }
    let mut values = numbers
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")));
    let layers: Vec<StateValues> = layers
        .iter()
        .map(|&(h, c)| StateValues {
            h: values.by_ref().take(h).collect(),
            c: c.then(|| values.by_ref().take(h).collect()),
        })
        .collect();
    let carried = backend
        .carried_from(&layers)
        .map_err(|e| bad(format!("cannot be restored: {e}")))?;
    Ok(Reading::Carried(Some(carried)))
}
