//! Parsers from setting text to values. Each returns what it expected on failure; the caller adds
//! the setting's name and origin.

use std::str::FromStr;
use std::time::Duration;

use shoal_protocol::ShardGroup;
use shoal_socket::ListenAddress;
use shoal_storage::TablePrefix;

use super::{LogFormat, MaxConnections, MetricsListen};

pub(super) type Parsed<T> = Result<T, String>;

pub(super) fn duration(text: &str) -> Parsed<Duration> {
    humantime::parse_duration(text.trim())
        .map_err(|_| "expected a duration like 2s, 500ms or 1m".to_owned())
}

/// A gateway timeout: more than zero, at most [`crate::gateway::MAX_LIMIT_TIMEOUT`] (a day).
pub(super) fn limit_timeout(text: &str) -> Parsed<Duration> {
    match duration(text)? {
        Duration::ZERO => Err("must be more than zero".to_owned()),
        long if long > crate::gateway::MAX_LIMIT_TIMEOUT => Err("must be at most 24h".to_owned()),
        timeout => Ok(timeout),
    }
}

pub(super) fn max_connections(text: &str) -> Parsed<MaxConnections> {
    let expected = || "expected auto or a number of connections (at least 1)".to_owned();
    match text.trim() {
        "auto" => Ok(MaxConnections::Auto),
        other => match count::<usize>(other).map_err(|_| expected())? {
            0 => Err(expected()),
            n => Ok(MaxConnections::Fixed(n)),
        },
    }
}

pub(super) fn boolean(text: &str) -> Parsed<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

pub(super) fn count<T: FromStr + TryFrom<u64>>(text: &str) -> Parsed<T> {
    let n: u64 = text
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| "expected a whole number".to_owned())?;
    T::try_from(n).map_err(|_| "the number is too large".to_owned())
}

/// A byte size: `1048576`, `512KiB`, `1MiB`, `4MB` (KB/MB/GB are powers of 1000, KiB/MiB/GiB of
/// 1024).
pub(super) fn size(text: &str) -> Parsed<usize> {
    let expected = || "expected a size like 1MiB, 512KiB or 1048576".to_owned();
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.replace('_', "").parse().map_err(|_| expected())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return Err(expected()),
    };
    n.checked_mul(factor)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| "the size is too large".to_owned())
}

pub(super) fn groups(text: &str) -> Parsed<Vec<ShardGroup>> {
    text.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| ShardGroup::new(g).map_err(|e| format!("group {g:?}: {e}")))
        .collect()
}

pub(super) fn listen(text: &str) -> Parsed<ListenAddress> {
    ListenAddress::from_str(text.trim()).map_err(|e| e.to_string())
}

/// `HOST:PORT` for an HTTP listener.
pub(super) fn http_address(text: &str) -> Parsed<String> {
    let text = text.trim();
    let expected = || "expected HOST:PORT, for example 127.0.0.1:8080 or 0.0.0.0:8080".to_owned();
    let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(expected());
    }
    Ok(text.to_owned())
}

/// `HOST:PORT` or `off`.
pub(super) fn gateway(text: &str) -> Parsed<Option<String>> {
    match text.trim() {
        "off" | "none" | "false" => Ok(None),
        other => http_address(other)
            .map(Some)
            .map_err(|e| format!("{e}, or off")),
    }
}

pub(super) fn metrics(text: &str) -> Parsed<MetricsListen> {
    match text.trim() {
        "gateway" => Ok(MetricsListen::Gateway),
        "off" | "none" | "false" => Ok(MetricsListen::Off),
        other => http_address(other)
            .map(MetricsListen::Separate)
            .map_err(|_| "expected gateway, off, or HOST:PORT for a separate listener".to_owned()),
    }
}

pub(super) fn storage_url(text: &str) -> Parsed<String> {
    let text = text.trim();
    let known = ["memory:", "sqlite:", "postgres://", "postgresql://"];
    if known.iter().any(|p| text.starts_with(p)) {
        Ok(text.to_owned())
    } else {
        Err(
            "expected sqlite://FILE, sqlite::memory:, postgres://USER@HOST/DB or memory:"
                .to_owned(),
        )
    }
}

pub(super) fn table_prefix(text: &str) -> Parsed<TablePrefix> {
    TablePrefix::from_str(text.trim()).map_err(|e| e.to_string())
}

pub(super) fn log_format(text: &str) -> Parsed<LogFormat> {
    match text.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".to_owned()),
    }
}

pub(super) fn log_level(text: &str) -> Parsed<String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let text = text.trim();
    let expected = || {
        "expected a level (error, warn, info, debug, trace, off), optionally with targets like \
         info,shoal_sharding=debug"
            .to_owned()
    };
    let is_level = |s: &str| LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    let well_formed = !text.is_empty()
        && text
            .split(',')
            .all(|directive| match directive.split_once('=') {
                Some((target, level)) => !target.trim().is_empty() && is_level(level),
                None => is_level(directive),
            });
    if !well_formed {
        return Err(expected());
    }
    tracing_subscriber::filter::Targets::from_str(text)
        .map(|_| text.to_owned())
        .map_err(|_| expected())
}

/// A TCP port other processes connect to: 1–65535.
pub(super) fn port(text: &str) -> Parsed<u16> {
    match text.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err("expected a TCP port from 1 to 65535".to_owned()),
        Ok(port) => Ok(port),
    }
}

pub(super) fn text(text: &str) -> Parsed<String> {
    if text.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("1MiB"), Ok(1 << 20));
        assert_eq!(size("512KiB"), Ok(512 << 10));
        assert_eq!(size("4MB"), Ok(4_000_000));
        assert_eq!(size("1_048_576"), Ok(1 << 20));
        assert!(size("lots").is_err());
        assert!(size("1 parsec").is_err());
    }

    #[test]
    fn durations_and_flags() {
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert!(duration("abc").is_err());
        assert_eq!(limit_timeout("10s"), Ok(Duration::from_secs(10)));
        assert!(limit_timeout("0s").is_err());
        assert_eq!(limit_timeout("24h"), Ok(Duration::from_secs(86_400)));
        assert!(limit_timeout("25h").is_err());
        assert_eq!(max_connections("auto"), Ok(MaxConnections::Auto));
        assert_eq!(max_connections("1_000"), Ok(MaxConnections::Fixed(1000)));
        assert!(max_connections("0").is_err());
        assert!(max_connections("many").is_err());
        assert_eq!(boolean("Yes"), Ok(true));
        assert!(boolean("maybe").is_err());
        assert_eq!(count::<u32>("300"), Ok(300));
        assert!(count::<u32>("-1").is_err());
        assert!(count::<u32>("99999999999").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(gateway("off"), Ok(None));
        assert_eq!(gateway("0.0.0.0:80"), Ok(Some("0.0.0.0:80".to_owned())));
        assert!(gateway("8080").is_err());
        assert_eq!(port("7100"), Ok(7100));
        assert!(port("0").is_err());
        assert!(port("65536").is_err());
        assert!(port("http").is_err());
        assert!(matches!(metrics("gateway"), Ok(MetricsListen::Gateway)));
        assert!(matches!(
            metrics("127.0.0.1:9090"),
            Ok(MetricsListen::Separate(_))
        ));
        assert!(storage_url("mysql://x").is_err());
        assert!(log_level("info,shoal_sharding=debug").is_ok());
        assert!(log_level("loud").is_err());
        assert!(log_level("info,shoal_sharding=loud").is_err());
        assert!(log_level("warn,shoal_runner=debug").is_ok());
    }
}
