//! Runner configuration files (see `shoal_fuzz::config`).

#![no_main]

libfuzzer_sys::fuzz_target!(init: shoal_fuzz::seeds::write_if_asked("config"), |data: &[u8]| shoal_fuzz::config::check(data));
