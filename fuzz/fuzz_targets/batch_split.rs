//! Fuzzes batch splitting, the first thing the agent and doppler do with a gRPC message.
#![no_main]

use bytes::Bytes;
use hydrant_envelope::wire::{EnvelopeView, split_batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let batch = Bytes::copy_from_slice(data);
    for envelope in split_batch(&batch).flatten() {
        let _ = EnvelopeView::parse(&envelope);
    }
});
