//! `hydrant top`: the terminal console (skeleton; being built).
