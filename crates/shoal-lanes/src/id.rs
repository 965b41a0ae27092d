//! Rules for the ids of lanes, profiles, tasks, events and handlers.

use std::fmt;

/// What an id names (used in [`crate::LanesConfigError::InvalidId`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// An event lane or an RPC lane.
    Lane,
    /// A topology profile.
    Profile,
    /// A task.
    Task,
    /// An event.
    Event,
    /// An event handler.
    Handler,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Lane => "lane",
            IdKind::Profile => "profile",
            IdKind::Task => "task",
            IdKind::Event => "event",
            IdKind::Handler => "handler",
        })
    }
}

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Checks an id: 1 to [`MAX_ID_LEN`] ASCII letters, digits, `_`, `-`, `:` or `/`.
///
/// Dots are refused on purpose (they are the separator of tracing targets and metric names), as
/// are spaces and anything outside ASCII (ids travel in gRPC metadata and in JWT claims).
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id.len() > MAX_ID_LEN {
        return Err("it is longer than 128 bytes");
    }
    if id.contains('.') {
        return Err("it contains '.'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'/'))
    {
        return Err("only ASCII letters, digits, '_', '-', ':' and '/' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_id;

    #[test]
    fn accepts_namespaced_ids_and_refuses_the_rest() {
        assert!(check_id("billing:charge").is_ok());
        assert!(check_id("orders/created-v2").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("app.lanes").is_err());
        assert!(check_id(" padded").is_err());
        assert!(check_id("é").is_err());
        assert!(check_id(&"x".repeat(129)).is_err());
    }
}
