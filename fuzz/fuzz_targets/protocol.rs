//! Runner protocol messages and identifier forms (see `shoal_fuzz::protocol`).

#![no_main]

libfuzzer_sys::fuzz_target!(init: shoal_fuzz::seeds::write_if_asked("protocol"), |data: &[u8]| shoal_fuzz::protocol::check(data));
