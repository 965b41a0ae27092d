//! Embedded migrations, rewritten for a table prefix.
//!
//! The migration files under `migrations/<backend>/` are embedded with `sqlx::migrate!` and
//! contain `{prefix}` placeholders. Before running, every migration's SQL gets the (validated)
//! prefix substituted and the bookkeeping table is set to `{prefix}_migrations`, so each prefix
//! has its own tables and its own migration history in a shared database.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, Migrator};

use crate::prefix::TablePrefix;

/// `template`'s migrations with `prefix` substituted, recording into `{prefix}_migrations`.
pub(crate) fn for_prefix(template: &Migrator, prefix: &TablePrefix) -> Migrator {
    let migrations = template
        .iter()
        .map(|m| {
            Migration::new(
                m.version,
                m.description.clone(),
                m.migration_type,
                sqlx::AssertSqlSafe(prefix.substitute(m.sql.as_str())).into_sql_str(),
                m.no_tx,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(Cow::Owned(prefix.table("migrations")));
    migrator
}
