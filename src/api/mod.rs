//! Transport only: tonic services, proto <-> domain conversion, status
//! codes, the auth interceptor, the per-call layer. Never touches candle.
pub mod auth;
pub mod blocking;
pub mod convert;
pub mod datasets;
pub mod inference;
pub mod jobs;
pub mod model_serving;
pub mod models;
pub mod prediction;
pub mod rpc;
pub mod status;
pub mod stream_end;
pub mod vocabulary_from;

pub use datasets::DatasetApi;
pub use inference::InferenceApi;
pub use jobs::JobApi;
pub use models::ModelApi;
pub use prediction::PredictionApi;
