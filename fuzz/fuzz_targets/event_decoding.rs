//! Coherence events as they arrive from the Redis channel (`l2::Event::decode`), on
//! arbitrary bytes: a decoded event encodes back to an equal event, its keys survive
//! the trip exactly, and a receiver's sequencer takes any sequence number.
#![no_main]

use l2::{Action, Event, Key, Sequencer, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = Event::decode(data) else {
        return;
    };
    assert_eq!(Event::decode(&event.encode()).expect("re-decodes"), event);
    let keys: Vec<&Key> = match &event.action {
        Action::Set { keys } | Action::Delete { keys } | Action::Refresh { keys } => {
            keys.iter().collect()
        }
        Action::InvalidatePattern { pattern } => vec![pattern],
        Action::Flush => Vec::new(),
    };
    for key in keys {
        if let Some(bytes) = key.bytes() {
            assert_eq!(Key::new(&bytes).bytes().as_deref(), Some(&bytes[..]));
        }
    }
    let mut sequencer = Sequencer::new("fuzz-receiver", 1);
    if event.instance == "fuzz-receiver" && event.epoch == 1 {
        assert_eq!(sequencer.observe(&event), Verdict::Own);
        return;
    }
    assert_eq!(sequencer.observe(&event), Verdict::Apply);
    assert_eq!(sequencer.observe(&event), Verdict::Stale);
    let mut next = event.clone();
    next.seq = event.seq.wrapping_add(1);
    sequencer.observe(&next);
    // A later run of the same sender, at any sequence number.
    next.epoch = event.epoch.wrapping_add(1);
    sequencer.observe(&next);
});
