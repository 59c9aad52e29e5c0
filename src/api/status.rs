//! The one place where domain errors become gRPC statuses.
use tonic::{Code, Status};

use crate::data::DataError;
use crate::error::InvalidField;
use crate::jobs::JobError;
use crate::predict::PredictError;
use crate::store::StoreError;

impl From<InvalidField> for Status {
    fn from(e: InvalidField) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

fn internal(what: impl std::fmt::Display) -> Status {
    tracing::error!(error = %what, "internal error");
    Status::internal(what.to_string())
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        internal(e)
    }
}

impl From<DataError> for Status {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Invalid(f) => f.into(),
            DataError::NotFound(_) => Status::not_found(e.to_string()),
            DataError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            DataError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
            DataError::Store(s) => s.into(),
        }
    }
}

impl From<JobError> for Status {
    fn from(e: JobError) -> Self {
        let code = match e {
            JobError::NotFound(_) => Code::NotFound,
            JobError::QueueFull(_) => Code::ResourceExhausted,
            JobError::ShuttingDown => Code::Unavailable,
            JobError::AlreadyEnded { .. } => Code::FailedPrecondition,
            JobError::Store(_) => return internal(e),
        };
        Status::new(code, e.to_string())
    }
}

impl From<PredictError> for Status {
    fn from(e: PredictError) -> Self {
        match e {
            PredictError::Invalid(f) => f.into(),
            PredictError::NotFound(_) => Status::not_found(e.to_string()),
            PredictError::Overloaded(_)
            | PredictError::QueueFull(_)
            | PredictError::TooManySessions(_) => Status::resource_exhausted(e.to_string()),
            PredictError::SessionNotFound(_) => Status::not_found(e.to_string()),
            PredictError::NotStateful(_) => Status::failed_precondition(e.to_string()),
            PredictError::Store(s) => s.into(),
            PredictError::Corrupt { .. } | PredictError::Candle(_) => internal(e),
        }
    }
}
