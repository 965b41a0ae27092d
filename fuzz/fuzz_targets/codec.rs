//! The runner batch stream: one encoded batch as a peer sends it (see `shoal_fuzz::codec`).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: shoal_fuzz::seeds::write_if_asked("codec"), |data: &[u8]| {
    let batch = Bytes::copy_from_slice(data);
    shoal_fuzz::codec::check_client_batch(&batch);
    shoal_fuzz::codec::check_server_batch(&batch);
});
