//! Launcher `.meta` files (see `shoal_fuzz::launcher`).

#![no_main]

libfuzzer_sys::fuzz_target!(init: shoal_fuzz::seeds::write_if_asked("launcher"), |data: &[u8]| shoal_fuzz::launcher::check(data));
