//! A tower layer around every gRPC call: a tracing span with the RPC's name
//! and a request id (the client's `x-request-id`, else a new one, echoed in
//! the response headers), the request counters and latency histogram by RPC
//! and status code, and the client's deadline (`grpc-timeout`).
//!
//! Deadlines: tonic itself honours `grpc-timeout` before the response
//! headers, but answers CANCELLED ("Timeout expired"). This layer sits inside
//! tonic's timeout and arms its own timer first, so the call ends with
//! DEADLINE_EXCEEDED as gRPC specifies; it also bounds server streams
//! (`Train`, `WatchJob`), which tonic's timeout does not cover: a stream
//! still open at its deadline ends with DEADLINE_EXCEEDED trailers.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tonic::{Code, Status};
use tracing::Instrument;

pub const REQUESTS_TOTAL: &str = "lstmd_grpc_requests_total";
pub const REQUEST_SECONDS: &str = "lstmd_grpc_request_duration_seconds";

/// Every RPC the server knows, by HTTP path (`/pkg.Service/Method`), with
/// its metric label (`pkg.Service/Method`). Anything else is `unknown`, so
/// clients cannot grow the label set.
fn known_rpcs() -> &'static HashMap<String, &'static str> {
    static KNOWN: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message;
        let sets = [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut known = HashMap::new();
        for bytes in sets {
            let set = prost_types::FileDescriptorSet::decode(bytes)
                .expect("the built-in descriptor sets decode");
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        let label = format!("{package}.{}/{}", service.name(), method.name());
                        known.insert(format!("/{label}"), &*Box::leak(label.into_boxed_str()));
                    }
                }
            }
        }
        known
    })
}

/// The metric label of a request path.
pub fn rpc_label(path: &str) -> &'static str {
    known_rpcs().get(path).copied().unwrap_or("unknown")
}

/// The canonical name of a gRPC status code, as other gRPC servers label it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    let n: i32 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Code::from_i32(n))
}

/// `grpc-timeout`: 1 to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The client's request id when it is a sane one (1..=128 visible ASCII
/// characters), else a new UUID.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// One call, recorded exactly once: when its status is known, or as
/// CANCELLED if it is dropped first (the client went away).
struct Call {
    rpc: &'static str,
    start: Instant,
    span: tracing::Span,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let seconds = self.start.elapsed().as_secs_f64();
        let name = code_name(code);
        metrics::counter!(REQUESTS_TOTAL, "rpc" => self.rpc, "code" => name).increment(1);
        metrics::histogram!(REQUEST_SECONDS, "rpc" => self.rpc).record(seconds);
        let _enter = self.span.enter();
        let ms = seconds * 1e3;
        match code {
            Code::Ok => tracing::debug!(code = name, ms, "rpc done"),
            Code::Internal | Code::Unknown | Code::DataLoss => {
                tracing::warn!(code = name, ms, "rpc failed")
            }
            _ => tracing::info!(code = name, ms, "rpc failed"),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

fn deadline_message(timeout: Duration) -> String {
    format!("deadline exceeded: the client allowed {timeout:?} (grpc-timeout)")
}

#[derive(Clone, Debug, Default)]
pub struct RpcLayer;

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        // Decode the descriptor sets now, not on the first call.
        let _ = known_rpcs();
        RpcService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RpcService<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for RpcService<S>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<RpcBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let start = Instant::now();
        // Handlers that commit at the end of a client stream ask how it ended.
        let request = super::stream_end::watch(request);
        // Armed before tonic's own grpc-timeout timer, so it fires first.
        let timeout = parse_grpc_timeout(request.headers());
        let deadline = timeout.map(|t| tokio::time::Instant::from_std(start) + t);
        let rpc = rpc_label(request.uri().path());
        let id = request_id(request.headers());
        let span = tracing::info_span!("rpc", rpc, request_id = %id);
        let mut call = Call {
            rpc,
            start,
            span: span.clone(),
            done: false,
        };
        // The ready service is the one that must be called (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = span.in_scope(|| inner.call(request));
        let id_header = HeaderValue::from_str(&id).ok();
        Box::pin(
            async move {
                let response = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, future).await {
                        Ok(r) => r?,
                        Err(_) => {
                            call.finish(Code::DeadlineExceeded);
                            let message = deadline_message(timeout.unwrap_or_default());
                            return Ok(Status::deadline_exceeded(message)
                                .into_http::<tonic::body::Body>()
                                .map(RpcBody::done));
                        }
                    },
                    None => future.await?,
                };
                let (mut parts, body) = response.into_parts();
                if let Some(v) = id_header {
                    parts.headers.insert("x-request-id", v);
                }
                super::status::mend_status(&mut parts.headers);
                let body = match status_code(&parts.headers) {
                    // Trailers-only: the status is in the headers.
                    Some(code) => {
                        call.finish(code);
                        RpcBody::done(body)
                    }
                    None => RpcBody {
                        inner: Some(body),
                        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                        timeout: timeout.unwrap_or_default(),
                        call: Some(call),
                    },
                };
                Ok(http::Response::from_parts(parts, body))
            }
            .instrument(span),
        )
    }
}

/// The response body: reads the status from the trailers, ends the stream
/// at the deadline, and runs the handler's stream inside the call's span.
pub struct RpcBody {
    inner: Option<tonic::body::Body>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    call: Option<Call>,
}

impl RpcBody {
    fn done(body: tonic::body::Body) -> Self {
        Self {
            inner: Some(body),
            deadline: None,
            timeout: Duration::ZERO,
            call: None,
        }
    }

    fn finish(&mut self, code: Code) {
        if let Some(mut call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl Body for RpcBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let span = this.call.as_ref().map(|c| c.span.clone());
        let _enter = span.as_ref().map(|s| s.enter());
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                // Dropping the body drops the handler's stream.
                this.deadline = None;
                this.inner = None;
                this.finish(Code::DeadlineExceeded);
                let mut trailers = HeaderMap::new();
                Status::deadline_exceeded(deadline_message(this.timeout))
                    .add_header(&mut trailers)
                    .expect("a plain message makes valid headers");
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        }
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(mut frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    super::status::mend_status(trailers);
                    let code = status_code(trailers).unwrap_or(Code::Unknown);
                    this.deadline = None;
                    this.finish(code);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(status)) => {
                this.deadline = None;
                this.finish(status.code());
                Poll::Ready(Some(Err(status)))
            }
            None => {
                this.inner = None;
                this.deadline = None;
                // Ended without trailers: not a proper gRPC response.
                this.finish(Code::Unknown);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream()) && self.call.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", timeout.parse().unwrap());
        h
    }

    #[test]
    fn grpc_timeout_parsing() {
        let t = |s| parse_grpc_timeout(&headers(s));
        assert_eq!(t("5S"), Some(Duration::from_secs(5)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(t("123456789S"), None);
        assert_eq!(t("S"), None);
        assert_eq!(t("1x"), None);
        assert_eq!(t("-1S"), None);
        assert_eq!(parse_grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn labels_are_known_rpcs_only() {
        assert_eq!(
            rpc_label("/lstmd.v1.JobService/GetJob"),
            "lstmd.v1.JobService/GetJob"
        );
        assert_eq!(
            rpc_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(
            rpc_label("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(rpc_label("/lstmd.v1.JobService/Nope"), "unknown");
        assert_eq!(rpc_label("/metrics"), "unknown");
    }

    #[test]
    fn request_ids_from_clients_are_kept_when_sane() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", "has space".parse().unwrap());
        assert_ne!(request_id(&h), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}
