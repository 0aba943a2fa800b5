//! Helpers shared by the multi-host tests.

pub mod netns;
