//! A call request to the HTTP gateway (see `shoal_fuzz::gateway`).

#![no_main]

libfuzzer_sys::fuzz_target!(init: shoal_fuzz::seeds::write_if_asked("gateway"), |data: &[u8]| shoal_fuzz::gateway::check(data));
