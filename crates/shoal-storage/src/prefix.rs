//! The table prefix that lets several clusters share one database.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The prefix of every table, sequence and index a SQL backend creates (`{prefix}_runners`,
/// `{prefix}_leases`, `{prefix}_migrations`, ...). Two clusters with different prefixes can share
/// one database and see nothing of each other.
///
/// A prefix is 1 to 32 characters: a lower-case ASCII letter or `_` first, then lower-case ASCII
/// letters, digits or `_`. That keeps it a plain SQL identifier on every backend (no quoting, no
/// case folding surprises) and keeps derived names within Postgres' 63-byte limit.
///
/// ```
/// use shoal_storage::TablePrefix;
///
/// let prefix: TablePrefix = "orders_cluster".parse()?;
/// assert_eq!(prefix.table("leases"), "orders_cluster_leases");
/// assert_eq!(TablePrefix::default().as_str(), "shoal");
/// assert!("Orders".parse::<TablePrefix>().is_err());
/// assert!("x; DROP TABLE y".parse::<TablePrefix>().is_err());
/// # Ok::<(), shoal_storage::InvalidTablePrefix>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TablePrefix(Arc<str>);

/// Why a text is not a valid [`TablePrefix`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid table prefix {prefix:?}: {reason}")]
pub struct InvalidTablePrefix {
    /// The refused text.
    pub prefix: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl TablePrefix {
    /// The longest accepted prefix, in bytes.
    pub const MAX_LEN: usize = 32;

    /// The default prefix, `shoal`.
    pub const DEFAULT: &'static str = "shoal";

    /// Validates `prefix`.
    pub fn new(prefix: &str) -> Result<Self, InvalidTablePrefix> {
        let refuse = |reason| {
            Err(InvalidTablePrefix {
                prefix: prefix.to_owned(),
                reason,
            })
        };
        let mut bytes = prefix.bytes();
        match bytes.next() {
            None => return refuse("it is empty"),
            Some(b) if !(b.is_ascii_lowercase() || b == b'_') => {
                return refuse("it must start with a lower-case ASCII letter or `_`");
            }
            Some(_) => {}
        }
        if prefix.len() > Self::MAX_LEN {
            return refuse("it is longer than 32 characters");
        }
        if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return refuse("only lower-case ASCII letters, digits and `_` are allowed");
        }
        Ok(Self(Arc::from(prefix)))
    }

    /// The prefix text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full name of the object `name` under this prefix: `{prefix}_{name}`.
    pub fn table(&self, name: &str) -> String {
        format!("{}_{name}", self.0)
    }

    /// `sql` with every `{prefix}` placeholder replaced by this prefix.
    pub fn substitute(&self, sql: &str) -> String {
        sql.replace("{prefix}", &self.0)
    }
}

impl Default for TablePrefix {
    fn default() -> Self {
        Self(Arc::from(Self::DEFAULT))
    }
}

impl FromStr for TablePrefix {
    type Err = InvalidTablePrefix;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

impl fmt::Display for TablePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TablePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for ok in ["shoal", "_x", "a1_b2", &"a".repeat(32)] {
            assert_eq!(
                TablePrefix::new(ok).map(|p| p.to_string()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "",
            "1abc",
            "Shoal",
            "sho-al",
            "a b",
            "a\"b",
            "ä",
            "x;drop",
            &"a".repeat(33),
        ] {
            assert!(TablePrefix::new(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn substitutes_placeholders() {
        let p = TablePrefix::new("c2").unwrap();
        assert_eq!(
            p.substitute("CREATE TABLE {prefix}_leases; DROP INDEX {prefix}_x"),
            "CREATE TABLE c2_leases; DROP INDEX c2_x"
        );
    }
}
