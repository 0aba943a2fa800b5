//! Fuzzes the subscription cursor (`?cursor=`, attacker-chosen text) and the doppler's ring
//! position record: decoding must never panic, never allocate from an unchecked count, and a
//! cursor that decodes must encode back to the same marks.
#![no_main]

use hydrant_envelope::cursor::{Cursor, RingPosition};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cursor) = Cursor::decode(text) {
            let again = Cursor::decode(&cursor.encode()).ok();
            assert_eq!(again.as_ref(), Some(&cursor));
        }
    }
    if let Some(position) = RingPosition::from_message(data) {
        assert_eq!(RingPosition::from_message(&position.encode()), Some(position));
    }
});
