//! Where the client subcommands connect, and how (TLS, bearer token).
use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::output::Format;
use super::Failure;
use crate::proto::{
    dataset_service_client::DatasetServiceClient, job_service_client::JobServiceClient,
    model_service_client::ModelServiceClient, prediction_service_client::PredictionServiceClient,
};

/// The help heading the client options are listed under (`lstmd serve`
/// hides the options under it).
pub const CLIENT_HEADING: &str = "Client";

/// Options every client subcommand takes. Their environment variables
/// differ from the server's (`LSTMD_TLS_CERT` is the server's own
/// certificate), so one pod can run both.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// The server: `host:port` or a URL (`https://` for TLS).
    #[arg(
        long,
        global = true,
        help_heading = CLIENT_HEADING,
        env = "LSTMD_SERVER",
        default_value = "127.0.0.1:50051"
    )]
    pub server: String,
    /// PEM CA certificates that sign the server's certificate (implies
    /// TLS). Without it, `https://` trusts the system's roots.
    #[arg(
        long,
        global = true,
        help_heading = CLIENT_HEADING,
        env = "LSTMD_CLIENT_TLS_CA"
    )]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(
        long,
        global = true,
        help_heading = CLIENT_HEADING,
        env = "LSTMD_CLIENT_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        global = true,
        help_heading = CLIENT_HEADING,
        env = "LSTMD_CLIENT_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it differs from
    /// the host in --server.
    #[arg(
        long,
        global = true,
        help_heading = CLIENT_HEADING,
        env = "LSTMD_CLIENT_TLS_DOMAIN"
    )]
    pub tls_domain: Option<String>,
    /// Bearer token sent on every call (servers started with
    /// --auth-token-file).
    #[arg(
        long,
        global = true,
        help_heading = CLIENT_HEADING,
        env = "LSTMD_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A file whose first line is the bearer token.
    #[arg(
        long,
        global = true,
        help_heading = CLIENT_HEADING,
        env = "LSTMD_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// `text` for people, `json` (the protobuf JSON mapping, one document
    /// per result, one per line for streams) for scripts.
    #[arg(long, global = true, help_heading = CLIENT_HEADING, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Auth>;

/// The four service clients over one connection.
pub struct Client {
    pub datasets: DatasetServiceClient<Svc>,
    pub jobs: JobServiceClient<Svc>,
    pub models: ModelServiceClient<Svc>,
    pub predict: PredictionServiceClient<Svc>,
}

impl ClientArgs {
    /// The URL --server names: `host:port` gets `http://`, or `https://`
    /// when a TLS option is given.
    fn url(&self) -> String {
        if self.server.contains("://") {
            self.server.clone()
        } else if self.tls_ca.is_some() || self.tls_cert.is_some() {
            format!("https://{}", self.server)
        } else {
            format!("http://{}", self.server)
        }
    }

    fn token(&self) -> Result<Option<String>, Failure> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_string()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::local(format!("--token-file {}: {e}", path.display())))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            return Err(Failure::local(format!(
                "--token-file {}: the first line must hold the token",
                path.display()
            )));
        }
        Ok(Some(token))
    }

    fn tls(&self) -> Result<ClientTlsConfig, Failure> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| Failure::local(format!("{flag} {}: {e}", path.display())))
        };
        let mut tls = ClientTlsConfig::new();
        tls = match &self.tls_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.identity(Identity::from_pem(
                read("--tls-cert", cert)?,
                read("--tls-key", key)?,
            ));
        }
        if let Some(domain) = &self.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }

    /// Connects now, so an unreachable server is one clear error.
    pub async fn connect(&self) -> Result<Client, Failure> {
        let url = self.url();
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Failure::local(format!("--server {:?}: {e}", self.server)))?
            .connect_timeout(std::time::Duration::from_secs(10));
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(self.tls()?)
                .map_err(|e| Failure::local(format!("TLS options: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            let cause = source_chain(&e);
            // A TLS-only port drops a plaintext HTTP/2 handshake.
            let hint = if url.starts_with("http://") && !cause.contains("refused") {
                " (if the server serves TLS, connect with --server https://HOST:PORT and --tls-ca CA.pem)"
            } else {
                ""
            };
            Failure::unreachable(format!(
                "cannot reach the server at {url}: {cause}{hint}"
            ))
        })?;
        let auth = match self.token()? {
            None => Auth(None),
            Some(token) => Auth(Some(format!("Bearer {token}").parse().map_err(|_| {
                Failure::local("the token must be printable ASCII".to_string())
            })?)),
        };
        let svc = |c: &Channel| InterceptedService::new(c.clone(), auth.clone());
        // Models and datasets can be large; the server caps what it sends.
        let max = 256 << 20;
        Ok(Client {
            datasets: DatasetServiceClient::new(svc(&channel)).max_decoding_message_size(max),
            jobs: JobServiceClient::new(svc(&channel)).max_decoding_message_size(max),
            models: ModelServiceClient::new(svc(&channel)).max_decoding_message_size(max),
            predict: PredictionServiceClient::new(svc(&channel)).max_decoding_message_size(max),
        })
    }
}

/// An error and its causes on one line ("transport error: connection
/// refused"), without causes that repeat the previous text.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}
