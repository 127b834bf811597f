pub mod config;
pub mod deliver;
pub mod lambda;
pub mod message;
pub mod policy;
pub mod process;
pub mod queue;
