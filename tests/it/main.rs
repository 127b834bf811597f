//! Tests that need nothing but loopback: every outcome against real HTTP
//! servers, the start-up checks of the built function, the JSON Schema, and
//! the body -> decision fuzzer. A plain `cargo test` runs them.

mod fuzz;
mod outcomes;
mod schema;
mod startup;
