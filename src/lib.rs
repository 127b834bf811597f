pub mod message;
pub mod policy;
