//! The one place where domain errors become gRPC statuses, and where every
//! answer's status is mended on its way out (message capped, tonic's own
//! over-limit code made the conventional one).
use http::HeaderMap;
use tonic::{Code, Status};

use crate::data::DataError;
use crate::error::InvalidField;
use crate::jobs::JobError;
use crate::predict::PredictError;
use crate::store::StoreError;

/// A domain error as the status a client gets. (A trait of ours: the
/// errors live in lstmd-core, which knows no gRPC, and `Status` in tonic,
/// so `From` cannot be implemented here.)
pub trait IntoStatus {
    fn into_status(self) -> Status;
}

/// `result.or_status()?` in a handler: the error side as its status.
pub trait OrStatus<T> {
    fn or_status(self) -> Result<T, Status>;
}

impl<T, E: IntoStatus> OrStatus<T> for Result<T, E> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(IntoStatus::into_status)
    }
}

/// A handler's own status passes through unchanged.
impl IntoStatus for Status {
    fn into_status(self) -> Status {
        self
    }
}

impl IntoStatus for InvalidField {
    fn into_status(self) -> Status {
        let e = self;
        Status::invalid_argument(e.to_string())
    }
}

fn internal(what: impl std::fmt::Display) -> Status {
    tracing::error!(error = %what, "internal error");
    Status::internal(what.to_string())
}

impl IntoStatus for StoreError {
    fn into_status(self) -> Status {
        match self {
            StoreError::Unavailable(_) => Status::unavailable(self.to_string()),
            e => internal(e),
        }
    }
}

impl IntoStatus for DataError {
    fn into_status(self) -> Status {
        let e = self;
        match e {
            DataError::Invalid(f) => f.into_status(),
            DataError::NotFound(_) => Status::not_found(e.to_string()),
            DataError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            DataError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
            DataError::Store(s) => s.into_status(),
        }
    }
}

impl IntoStatus for JobError {
    fn into_status(self) -> Status {
        let e = self;
        let code = match e {
            JobError::Invalid(f) => return f.into_status(),
            JobError::Data(d) => return d.into_status(),
            JobError::NotFound(_) | JobError::NoDataset { .. } => Code::NotFound,
            JobError::QueueFull(_) => Code::ResourceExhausted,
            JobError::ShuttingDown => Code::Unavailable,
            JobError::AlreadyEnded { .. } | JobError::DatasetInUse { .. } => {
                Code::FailedPrecondition
            }
            JobError::Store(s) => return s.into_status(),
            JobError::NotRecorded | JobError::Spawn { .. } => return internal(e),
        };
        Status::new(code, e.to_string())
    }
}

impl IntoStatus for PredictError {
    fn into_status(self) -> Status {
        let e = self;
        match e {
            PredictError::Invalid(f) => f.into_status(),
            PredictError::NotFound(_) => Status::not_found(e.to_string()),
            PredictError::Overloaded(_)
            | PredictError::QueueFull(_)
            | PredictError::TooManySessions(_) => Status::resource_exhausted(e.to_string()),
            PredictError::SessionNotFound(_) => Status::not_found(e.to_string()),
            PredictError::NotStateful(_) => Status::failed_precondition(e.to_string()),
            PredictError::Store(s) => s.into_status(),
            PredictError::Corrupt { .. }
            | PredictError::Engine(_)
            | PredictError::Batch(_)
            | PredictError::Spawn { .. } => internal(e),
        }
    }
}

impl IntoStatus for crate::interop::InteropError {
    fn into_status(self) -> Status {
        let e = self;
        if e.is_invalid_input() {
            Status::invalid_argument(e.to_string())
        } else {
            internal(e)
        }
    }
}

/// The longest status message sent, in bytes: an echoed value never makes
/// an answer large (gRPC clients cap response metadata, C-core at 8 KiB).
pub const MAX_MESSAGE_BYTES: usize = 512;

/// `message`, cut to `MAX_MESSAGE_BYTES` at a character boundary.
pub fn cap_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_string();
    }
    let mut cut = MAX_MESSAGE_BYTES - 48;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}... (message cut; {} bytes in all)",
        &message[..cut],
        message.len()
    )
}

/// Mends the status in a response's headers or trailers: caps its message,
/// and answers a request over `--max-message-bytes` with RESOURCE_EXHAUSTED
/// (tonic says OUT_OF_RANGE; gRPC's convention for a size limit is the
/// former).
pub fn mend_status(headers: &mut HeaderMap) {
    let Some(code) = headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
    else {
        return;
    };
    let long = headers
        .get("grpc-message")
        .is_some_and(|v| v.len() > MAX_MESSAGE_BYTES);
    if !long && code != Code::OutOfRange {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let (code, message) = match code {
        Code::OutOfRange if status.message().contains("message length too large") => (
            Code::ResourceExhausted,
            format!("{} (the server's --max-message-bytes)", status.message()),
        ),
        _ => (code, status.message().to_string()),
    };
    headers.remove("grpc-message");
    let _ = Status::new(code, cap_message(&message)).add_header(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_capped_and_size_limits_are_resource_exhausted() {
        let mut h = HeaderMap::new();
        Status::invalid_argument(format!("name must be short, got {}", "é".repeat(5000)))
            .add_header(&mut h)
            .unwrap();
        mend_status(&mut h);
        let s = Status::from_header_map(&h).unwrap();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().len() <= MAX_MESSAGE_BYTES,
            "{}",
            s.message().len()
        );
        assert!(s.message().starts_with("name must be short"));

        let mut h = HeaderMap::new();
        Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        )
        .add_header(&mut h)
        .unwrap();
        mend_status(&mut h);
        let s = Status::from_header_map(&h).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message().contains("--max-message-bytes"),
            "{}",
            s.message()
        );
    }
}
