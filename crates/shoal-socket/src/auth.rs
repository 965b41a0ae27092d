//! Optional token authentication between runners: a shared secret in the `authorization`
//! metadata, compared in constant time.

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

const HEADER: &str = "authorization";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Server side: refuses calls without the right token.
#[derive(Clone)]
pub(crate) struct RequireToken {
    expected: Option<Vec<u8>>,
}

impl std::fmt::Debug for RequireToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireToken")
            .field("enabled", &self.expected.is_some())
            .finish()
    }
}

impl RequireToken {
    pub(crate) fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| bearer(t).into_bytes()),
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get(HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if given.len() == expected.len() && bool::from(given.ct_eq(expected)) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong runner token (authorization: Bearer <token>)",
            ))
        }
    }
}

/// Client side: attaches the token to every call.
#[derive(Clone)]
pub(crate) struct AttachToken {
    value: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for AttachToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachToken")
            .field("enabled", &self.value.is_some())
            .finish()
    }
}

impl AttachToken {
    /// `None` token: nothing attached. A token that cannot be a header value is refused.
    pub(crate) fn new(token: Option<&str>) -> Result<Self, String> {
        let value = token
            .map(|t| {
                bearer(t)
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| "the runner token must be printable ASCII".to_owned())
            })
            .transpose()?;
        Ok(Self { value })
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.value {
            request.metadata_mut().insert(HEADER, value.clone());
        }
        Ok(request)
    }
}
