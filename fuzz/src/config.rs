//! Runner configuration files: TOML text read into `Sources` and resolved into a
//! `RunnerConfig` (and the narrower configurations of `shoal status` and `shoal migrate`), as
//! `shoal run --config FILE` does.

use std::path::Path;

use shoal_runner::config::{RunnerConfig, SETTINGS, ShardLayout, Sources, StorageConfig};

/// Reads `data` as a configuration file; checks that resolution is deterministic, that the
/// narrower resolutions agree with the full one, and that a setting means the same from the file
/// as from the environment.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("shoal.toml");
    let sources = match Sources::new().with_file_text(path, text) {
        Ok(sources) => sources,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    let config = RunnerConfig::resolve(&sources);
    let again = RunnerConfig::resolve(&sources);
    assert_eq!(
        format!("{config:?}"),
        format!("{again:?}"),
        "not deterministic"
    );
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    // What `shoal status` and `shoal migrate` resolve from the same sources agrees.
    let storage = StorageConfig::resolve(&sources)
        .unwrap_or_else(|e| panic!("the runner config resolved but its storage did not: {e}"));
    assert_eq!(format!("{storage:?}"), format!("{:?}", config.storage));
    let layout = ShardLayout::resolve(&sources)
        .unwrap_or_else(|e| panic!("the runner config resolved but its shard layout did not: {e}"));
    assert_eq!(
        layout.shards_per_group,
        config.sharding.shards_per_group().get()
    );
    assert!(!config.storage.redacted_url().is_empty() || config.storage.url.is_empty());

    // The same values given as `SHOAL_*` variables resolve to the same configuration.
    if !sources.entities().is_empty() {
        return;
    }
    let env: Vec<(String, String)> = SETTINGS
        .iter()
        .filter_map(|s| {
            sources
                .raw(s.key)
                .map(|sourced| (s.env.to_owned(), sourced.value.clone()))
        })
        .collect();
    let from_env = RunnerConfig::resolve(&Sources::new().with_env(env))
        .unwrap_or_else(|e| panic!("the file's values refused from the environment: {e}"));
    assert_eq!(
        format!("{from_env:?}"),
        format!("{config:?}"),
        "the environment and the file disagree"
    );
}
