//! Loading TLS material. TLS between runners is mutual: each side presents its certificate and
//! checks the other's against the cluster CA.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsConfig;
use crate::error::SocketError;

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, SocketError> {
    std::fs::read(path)
        .map_err(|e| SocketError::Tls(format!("cannot read {what} {}: {e}", path.display())))
}

/// This runner's certificate and key.
fn identity(config: &TlsConfig) -> Result<Identity, SocketError> {
    let cert = read(&config.cert, "certificate")?;
    let key = read(&config.key, "private key")?;
    Ok(Identity::from_pem(cert, key))
}

/// The server side: presents this runner's identity and requires a client certificate signed by
/// the CA (a caller without one, or with one another CA signed, fails the handshake).
pub(crate) fn server(config: &TlsConfig) -> Result<ServerTlsConfig, SocketError> {
    let ca = read(&config.ca, "CA certificate")?;
    Ok(ServerTlsConfig::new()
        .identity(identity(config)?)
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false))
}

/// The client side: checks the runner's certificate against the CA (and the name `domain`, or
/// `host`) and presents this runner's identity as its client certificate.
pub(crate) fn client(config: &TlsConfig, host: &str) -> Result<ClientTlsConfig, SocketError> {
    let ca = read(&config.ca, "CA certificate")?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(identity(config)?)
        .domain_name(config.domain.clone().unwrap_or_else(|| host.to_owned())))
}
