//! Loading TLS material.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsConfig;
use crate::error::SocketError;

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, SocketError> {
    std::fs::read(path)
        .map_err(|e| SocketError::Tls(format!("cannot read {what} {}: {e}", path.display())))
}

pub(crate) fn server(config: &TlsConfig) -> Result<ServerTlsConfig, SocketError> {
    let cert = read(&config.cert, "certificate")?;
    let key = read(&config.key, "private key")?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}

pub(crate) fn client(config: &TlsConfig, host: &str) -> Result<ClientTlsConfig, SocketError> {
    let ca = read(&config.ca, "CA certificate")?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(config.domain.clone().unwrap_or_else(|| host.to_owned())))
}
