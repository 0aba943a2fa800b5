//! Fuzzes the zero-copy envelope walker every ingress runs on untrusted bytes: it must never
//! panic, and whatever it accepts a stock prost decoder must accept too.
#![no_main]

use hydrant_envelope::{v2, wire::EnvelopeView};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = EnvelopeView::parse(data) {
        assert!(v2::Envelope::decode(data).is_ok());
        let _ = view.log();
        let _ = view.counter_name();
        let _ = view.gauge_values().count();
        let _ = view.tags().count();
        let _ = view.event();
    }
});
