//! The web dashboard (skeleton; being built).
